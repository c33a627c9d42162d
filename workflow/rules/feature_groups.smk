# Helpers of workflow/rules/features.smk: which slides each group extraction job embeds, and where
# it stages their stores (the design is explained at the top of features.smk).

from pipeline.staging import store_attrs

FEATURES = config["features"]
SLIDES_PER_JOB = int(FEATURES["slides_per_job"])


def staged_path(encoder, slide):
    return f"{RESULTS}/staging/features/{encoder}/{slide}.zarr"


def pending_groups(encoder):
    """Group id -> slide ids, for the slides of ``encoder`` whose feature store is missing."""
    pending = [
        s for s in sorted(SLIDES) if not os.path.exists(features_path(encoder, s))
    ]
    groups = {}
    for start in range(0, len(pending), SLIDES_PER_JOB):
        members = pending[start : start + SLIDES_PER_JOB]
        key = hashlib.sha256("\n".join([encoder, *members]).encode()).hexdigest()[:12]
        groups[key] = members
    return groups


GROUPS = {encoder: pending_groups(encoder) for encoder in ENCODERS}
GROUP_OF = {
    encoder: {s: key for key, members in groups.items() for s in members}
    for encoder, groups in GROUPS.items()
}
EXTRACT_GPU = 0 if FEATURES["device"] == "cpu" else 1


def group_summary(encoder, key):
    return f"{RESULTS}/staging/features/{encoder}/group-{key}.json"


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
    """The group summary a slide's store waits for (pending slide) or was made by (finished slide,
    as its attrs record), so a finished store has the same inputs on every later run; ancient, as
    the summary is written after the stores."""
    if w.slide in GROUP_OF[w.encoder]:
        return [ancient(group_summary(w.encoder, GROUP_OF[w.encoder][w.slide]))]
    attrs = store_attrs(features_path(w.encoder, w.slide)) or {}
    made_by = attrs.get("group_summary")
    return [ancient(made_by)] if made_by and os.path.exists(made_by) else []
