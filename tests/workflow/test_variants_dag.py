"""Variants and repeated CV in the workflow's DAG (one dry run): names, paths, shared teachers."""

from __future__ import annotations

import re

import yaml

from .test_dag import DEMO, fake_cohort


def test_variants_repeats_and_external_cohort_in_the_dag(tmp_path, snakemake, job_counts):
    fake_cohort(tmp_path, n_slides=6, missing=0)
    ext = tmp_path / "ext"
    (ext / "slides").mkdir(parents=True)
    rows = ["slide_id,case_id,label"]
    for i in range(4):
        (ext / "slides" / f"ext{i}.svs").touch()
        rows.append(f"ext{i},ec{i},{['normal', 'tumor'][i % 2]}")
    (ext / "labels.csv").write_text("\n".join(rows) + "\n")
    task = {**DEMO["tasks"][0], "external": {"slides_dir": "ext/slides", "table": "ext/labels.csv"}}
    config = {
        **DEMO,
        "tasks": [task],
        "mil": {
            "methods": ["abmil", "mhim_abmil"],
            "folds": 2,
            "repeats": 2,
            "variants": {"mhim_abmil_no_grn": {"method": "mhim_abmil", "mhim": {"grn": False}}},
        },
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "--configfile", str(cfg), "-p")
    counts = job_counts(proc.stdout)
    assert counts["splits"] == 2  # one fold assignment per repeat
    assert counts["train"] == 3 * 2 * 2  # abmil, mhim_abmil, the variant x 2 repeats x 2 folds
    assert counts["evaluate"] == 3
    # the external cohort is tiled and embedded like the rest and predicted by every fold model
    assert counts["tile"] == 6 + 4 and counts["extract"] == 6 + 4
    assert counts["external_predict"] == 12 and counts["external_evaluate"] == 3
    predicts = re.findall(r"wsi-mil predict --model (\S+) .*?--labels (\S+) +-o (\S+)", proc.stdout)
    assert len(predicts) == 12
    for model, table, out in predicts:
        assert table == "ext/labels.csv"
        tail = re.search(r"mil/tumour/efficientnet_lite0/(\S+/repeat\d/fold\d)$", model).group(1)
        assert out.endswith(f"external/tumour/efficientnet_lite0/{tail}.csv")
    runs = re.findall(
        r"--splits (\S+) --fold (\d) --method (\S+) .*?-o (\S+)(?: --teacher-init (\S+))?",
        proc.stdout,
    )
    assert len(runs) == 12
    by_method = {}
    for splits, fold, method, out, teacher in runs:
        repeat = re.search(r"repeat(\d)", splits).group(1)
        assert splits.endswith(f"splits/tumour/repeat{repeat}.csv")
        assert out.endswith(f"/{method}/repeat{repeat}/fold{fold}")
        by_method.setdefault(method, {})[(repeat, fold)] = teacher
    # the variant's folds start from exactly the teacher checkpoints of the full method
    assert by_method["mhim_abmil_no_grn"] == by_method["mhim_abmil"]
    assert by_method["mhim_abmil"][("1", "0")].endswith("/abmil/repeat1/fold0")
    assert all(t == "" for t in by_method["abmil"].values())
    # --teacher-init is made from the declared input (train_inputs), so this is also the DAG order
    assert "--reference abmil" in proc.stdout
