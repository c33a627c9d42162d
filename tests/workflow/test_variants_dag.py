"""Variants and repeated CV in the workflow's DAG (one dry run): names, paths, shared teachers."""

from __future__ import annotations

import re

import yaml

from .test_dag import DEMO, fake_cohort


def _external_config(tmp_path, **mil) -> str:
    """The 6-slide fake cohort with a 4-slide external cohort; abmil, mhim_abmil and a variant on
    2 repeats x 2 folds (``mil`` overrides on top). Returns the config file's path."""
    ext = tmp_path / "ext"
    if not ext.exists():  # the cohort once per folder; each call writes its config
        fake_cohort(tmp_path, n_slides=6, missing=0)
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
            **mil,
        },
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return str(cfg)


def test_variants_repeats_and_external_cohort_in_the_dag(tmp_path, snakemake, job_counts):
    proc = snakemake(tmp_path, "-n", "--configfile", _external_config(tmp_path), "-p")
    counts = job_counts(proc.stdout)
    assert counts["splits"] == 2  # one fold assignment per repeat
    assert counts["train"] == 3 * 2 * 2  # abmil, mhim_abmil, the variant x 2 repeats x 2 folds
    assert counts["evaluate"] == 3
    # the external cohort is tiled and embedded like the rest and predicted by every fold model
    assert counts["tile"] == 6 + 4 and counts["extract"] == 6 + 4
    assert counts["external_predict"] == 12 and counts["external_evaluate"] == 3
    predicts = re.findall(
        r"wsi-mil predict --model (\S+) .*?--labels (\S+) +-o (\S+) --metrics", proc.stdout
    )
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
    # heatmaps of the external cohort: one job per method/variant, by the first fold model
    assert counts["external_heatmaps"] == 3
    drawn = re.findall(r"wsi-mil predict --model (\S+) .*?--heatmaps (\S+) ", proc.stdout)
    assert sorted(drawn) == [
        (f"demo/results/mil/tumour/efficientnet_lite0/{m}/repeat0/fold0",
         f"demo/results/heatmaps_external/tumour/efficientnet_lite0/{m}")
        for m in ("abmil", "mhim_abmil", "mhim_abmil_no_grn")
    ]  # fmt: skip
    # the viewer pages and GeoJSON cover both cohorts: every method's cv and external heatmaps
    viewer = re.search(r"wsi-mil viewer --task tumour (.*?) --tiles-dir", proc.stdout).group(1)
    geojson = re.search(r"wsi-mil export-geojson (.*?) -k", proc.stdout).group(1)
    for m in ("abmil", "mhim_abmil", "mhim_abmil_no_grn"):
        for top in ("heatmaps", "heatmaps_external"):
            folder = f"demo/results/{top}/tumour/efficientnet_lite0/{m}"
            assert folder in viewer.split() and folder in geojson.split()
    assert counts["viewer_tiles"] == 6 + 4 and counts["viewer"] == counts["geojson"] == 1


ALL_CASES_RULES = ("train_all_cases", "external_predict_all_cases", "external_evaluate_all_cases")


def test_all_cases_model_jobs_only_with_the_option(tmp_path, snakemake, job_counts):
    off = job_counts(snakemake(tmp_path, "-n", "--configfile", _external_config(tmp_path)).stdout)
    assert not set(ALL_CASES_RULES) & set(off)  # the default adds no job
    cfg = _external_config(tmp_path, external_all_cases=True)
    proc = snakemake(tmp_path, "-n", "--configfile", cfg, "-p")
    on = job_counts(proc.stdout)
    # one all-cases model per method/variant, its external predictions and summary; nothing else
    assert {r: on[r] for r in ALL_CASES_RULES} == dict.fromkeys(ALL_CASES_RULES, 3)
    # the external cohort's heatmaps are then drawn by the all-cases models
    drawn = re.findall(r"wsi-mil predict --model (\S+) .*?--heatmaps (\S+) ", proc.stdout)
    assert sorted(model for model, _ in drawn) == [
        f"demo/results/mil/tumour/efficientnet_lite0/{m}/all_cases"
        for m in ("abmil", "mhim_abmil", "mhim_abmil_no_grn")
    ]
    assert {r: n for r, n in on.items() if r not in ALL_CASES_RULES and r != "total"} == {
        r: n for r, n in off.items() if r != "total"
    }
    assert on["total"] == off["total"] + 9
    runs = re.findall(
        r"wsi-mil train-all-cases .*?--folds (.+?) --method (\S+) .*?-o (\S+)"
        r"(?: --teacher-init (\S+))?",
        proc.stdout,
    )
    assert len(runs) == 3
    base = "demo/results/mil/tumour/efficientnet_lite0"
    for folds, method, out, teacher in runs:
        # every fold of every repeat gives its best epoch; the teacher is the baseline's model
        assert sorted(folds.split()) == [
            f"{base}/{method}/repeat{r}/fold{k}" for r in (0, 1) for k in (0, 1)
        ]
        assert out.endswith(f"{base}/{method}/all_cases")
        assert teacher == ("" if method == "abmil" else f"{base}/abmil/all_cases")
    predicts = re.findall(
        r"wsi-mil predict --model (\S+/all_cases) .*?-o (\S+) --metrics", proc.stdout
    )
    assert sorted(out for _, out in predicts) == [
        f"demo/results/external_all_cases/tumour/efficientnet_lite0/{m}/all_cases.csv"
        for m in ("abmil", "mhim_abmil", "mhim_abmil_no_grn")
    ]
