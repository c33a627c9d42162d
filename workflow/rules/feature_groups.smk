# Helpers of workflow/rules/features.smk: which slides each group extraction job embeds, and where
# it stages their stores (the design is explained at the top of features.smk).

from pipeline.store import write_text

FEATURES = config["features"]
SLIDES_PER_JOB = int(FEATURES["slides_per_job"])


def staged_path(encoder, slide):
    return f"{staging_dir(encoder)}/{slide}.zarr"


def staging_dir(encoder):
    return f"{RESULTS}/staging/features/{encoder}"


def plan_groups(encoder):
    """Group id -> slide ids. A group, once formed, is kept in staging/.../group-ID.members and read
    back by every later parse (also each cluster job's), so a slide stays in the group it was
    embedded by. New groups are formed from the slides that are in no group and have no store.
    """
    folder = Path(staging_dir(encoder))
    groups = {}
    for path in sorted(folder.glob("group-*.members")):
        members = [s for s in path.read_text().split() if s in SLIDES]
        groups[path.name[len("group-") : -len(".members")]] = members
    listed = {s for members in groups.values() for s in members}
    new = [
        s
        for s in sorted(SLIDES)
        if s not in listed and not os.path.exists(features_path(encoder, s))
    ]
    for start in range(0, len(new), SLIDES_PER_JOB):
        members = new[start : start + SLIDES_PER_JOB]
        key = hashlib.sha256("\n".join([encoder, *members]).encode()).hexdigest()[:12]
        write_text(folder / f"group-{key}.members", "\n".join(members) + "\n")
        groups[key] = members
    return groups


GROUPS = {encoder: plan_groups(encoder) for encoder in ENCODERS}
GROUP_OF = {
    encoder: {s: key for key, members in groups.items() for s in members}
    for encoder, groups in GROUPS.items()
}
EXTRACT_GPU = 0 if FEATURES["device"] == "cpu" else 1


def group_summary(encoder, key):
    return f"{staging_dir(encoder)}/group-{key}.json"


def group_members(w):
    return GROUPS[w.encoder][w.group]


def group_arguments(w):
    """SLIDE TILES pairs and one -o STAGED per slide of the group, quoted for the shell."""
    members = group_members(w)
    pairs = [f"{shlex.quote(SLIDES[s])} {shlex.quote(tiles_path(s))}" for s in members]
    outs = [f"-o {shlex.quote(staged_path(w.encoder, s))}" for s in members]
    return " ".join(pairs + outs)


def extract_settings(w):
    return settings_digest(
        f"features.weights.{w.encoder}", "features.precision", "features.dtype"
    )


def group_input(w):
    """The summary of the group that embeds (or embedded) the slide: the same path on every run,
    so Snakemake sees the same inputs; ancient, as the summary is written after the stores. Slides
    in no group (stores made before groups existed) have none."""
    key = GROUP_OF[w.encoder].get(w.slide)
    return [ancient(group_summary(w.encoder, key))] if key else []
