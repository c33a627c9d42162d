# Helpers of workflow/rules/features.smk: which slides each group extraction job embeds, and where
# it stages their stores (the design is explained at the top of features.smk).

from pipeline.staging import request, why_not_reusable
from pipeline.store import remove_stale_temporaries_in, write_text

FEATURES = config["features"]
SLIDES_PER_JOB = int(FEATURES["slides_per_job"])


def staged_path(encoder, slide):
    return OUT.staged_features(encoder, slide)


def staging_dir(encoder):
    return OUT.staging_dir(encoder)


def group_summary(encoder, key):
    return OUT.group_summary(encoder, key)


def drop_unusable_stores(encoder):
    """Remove the published stores of ``encoder`` that do not answer this run's request (damaged,
    of another encoder or weights, of another tiling), one line each, so they are recomputed: to
    Snakemake such a store is a folder newer than its inputs. Also removes the hidden temporaries of
    killed jobs there. Only the main process of a run that writes removes anything; a dry run names
    the stores."""
    if not getattr(workflow, "is_main_process", True):
        return
    writer = runlock.is_writer()
    # what killed jobs left half-written, and no later write of the same store removes
    if writer:
        for folder in (OUT.features_dir(encoder), staging_dir(encoder)):
            remove_stale_temporaries_in(folder)
    weights = FEATURES["weights"].get(encoder, "pretrained")
    requested = request(encoder, weights, FEATURES["precision"], FEATURES["dtype"])
    for slide in sorted(SLIDES):
        store = Path(OUT.features(encoder, slide))
        if not store.exists():
            continue
        why = why_not_reusable(store, Path(OUT.tiles(slide)), requested)
        if why is None:
            continue
        if writer:
            shutil.rmtree(store, ignore_errors=True)
        action = "removed, it is recomputed" if writer else "a run will recompute it"
        print(f"{store} {why}: {action}", file=sys.stderr)


def plan_groups(encoder):
    """(group id -> slide ids, slide id -> its group). A group, once formed, is kept in
    staging/.../group-ID.members and read back by every later parse (also each cluster job's), so a
    slide keeps its group and its extract job the same inputs. New groups are formed from the slides
    without a store that are in no group, or whose group finished but whose staged store is gone
    (a store deleted by hand); the later group wins."""
    folder = Path(staging_dir(encoder))
    files = sorted(
        folder.glob("group-*.members"), key=lambda p: (p.stat().st_mtime_ns, p.name)
    )
    groups, owner = {}, {}
    for path in files:
        key = path.name[len("group-") : -len(".members")]
        groups[key] = [s for s in path.read_text().split() if s in SLIDES]
        owner.update({s: key for s in groups[key]})
    todo = [
        s
        for s in sorted(SLIDES)
        if not os.path.exists(OUT.features(encoder, s))
        and (
            s not in owner
            or (
                os.path.exists(group_summary(encoder, owner[s]))
                and not os.path.exists(staged_path(encoder, s))
            )
        )
    ]
    for start in range(0, len(todo), SLIDES_PER_JOB):
        members = todo[start : start + SLIDES_PER_JOB]
        key = hashlib.sha256("\n".join([encoder, *members]).encode()).hexdigest()[:12]
        write_text(folder / f"group-{key}.members", "\n".join(members) + "\n")
        groups[key] = members
        owner.update({s: key for s in members})
    return groups, owner


for _encoder in ENCODERS:
    drop_unusable_stores(_encoder)
PLANS = {encoder: plan_groups(encoder) for encoder in ENCODERS}
GROUPS = {encoder: plan[0] for encoder, plan in PLANS.items()}
GROUP_OF = {encoder: plan[1] for encoder, plan in PLANS.items()}
EXTRACT_GPU = 0 if FEATURES["device"] == "cpu" else 1


def group_members(w):
    return GROUPS[w.encoder][w.group]


def group_arguments(w):
    """SLIDE TILES pairs and one -o STAGED per slide of the group, quoted for the shell."""
    members = group_members(w)
    pairs = [f"{shlex.quote(SLIDES[s])} {shlex.quote(OUT.tiles(s))}" for s in members]
    outs = [f"-o {shlex.quote(staged_path(w.encoder, s))}" for s in members]
    return " ".join(pairs + outs)


def extract_settings(w):
    return settings_digest(
        f"features.weights.{w.encoder}", "features.precision", "features.dtype"
    )


def group_input(w):
    """The summary of the group that embeds (or embedded) the slide: the same path on every run,
    so Snakemake sees the same inputs. Not ``ancient``: the store moved into place gets Snakemake's
    timestamp when its job ends, so it is newer than the summary anyway, and Snakemake (9.x) never
    re-plans a missing output downstream of a re-run job when the input between them is ancient
    (a group job killed after writing its summary left its slides' stores unpublished for good).
    Slides in no group (stores made before groups existed) have none."""
    key = GROUP_OF[w.encoder].get(w.slide)
    return [group_summary(w.encoder, key)] if key else []
