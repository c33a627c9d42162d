"""The workflow's DAG as a dry run shows it: slide discovery, label checks and job counts."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((REPO / "workflow" / "demo.yaml").read_text())


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def fake_cohort(root: Path, n_slides: int = 7, missing: int = 1) -> list[str]:
    """Empty slide files (a dry run never opens them) and tables in the demo config's layout."""
    slides = root / "demo" / "data" / "slides"
    slides.mkdir(parents=True)
    (root / "demo" / "data" / "masks").mkdir()
    (root / "demo" / "data" / "masks" / "masks.json").write_text('{"slides": {}}')  # demo: masks
    ids = [f"case{i:03d}_a" for i in range(n_slides)]
    for sid in ids:
        (slides / f"{sid}.svs").touch()
    listed = ids + [f"gone{i}" for i in range(missing)]
    _write_csv(
        root / "demo" / "data" / "labels.csv",
        ["slide_id", "case_id", "label"],
        [[s, s.split("_")[0], ["normal", "tumor"][i % 2]] for i, s in enumerate(listed)],
    )
    _write_csv(
        root / "demo" / "data" / "survival.csv",
        ["case_id", "time", "event"],
        [[s.split("_")[0], 10 + i, i % 2] for i, s in enumerate(listed)],
    )
    return ids


def test_full_dag_of_demo_config_has_one_job_per_slide_encoder_fold_method(
    tmp_path, snakemake, job_counts
):
    ids = fake_cohort(tmp_path)
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "workflow" / "demo.yaml"))
    counts = job_counts(proc.stdout)
    tasks = len(DEMO["tasks"])
    encoders = len(DEMO["features"]["encoders"])
    folds = DEMO["mil"]["folds"]
    methods = DEMO["mil"]["methods"]
    assert counts["tile"] == len(ids)
    assert counts["extract"] == len(ids) * encoders
    assert counts["splits"] == tasks
    assert counts["train"] == tasks * encoders * len(methods) * folds  # baselines and MHIM alike
    assert counts["evaluate"] == tasks * encoders * len(methods)
    assert counts["heatmaps"] == tasks * encoders * len(methods)  # out-of-fold heatmaps, all slides
    assert counts["summary"] == counts["report"] == counts["all"] == 1
    # the viewer: one pyramid per slide, one GeoJSON folder and one set of pages per task
    assert counts["viewer_tiles"] == len(ids)
    assert counts["geojson"] == counts["viewer"] == tasks
    # the slide listed in the labels but absent on disk: one clear line per task, and left out
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "'gone0'" in line]
    assert len(warnings) == tasks and all("not found in demo/data/slides" in w for w in warnings)
    # the effective config the commands get: validated, defaults filled
    effective = yaml.safe_load(
        (tmp_path / "demo" / "results" / "config.effective.yaml").read_text()
    )
    assert effective["tiling"]["patch_size"] == 256 and effective["mil"]["folds"] == folds


def test_dag_expands_encoders_and_methods_and_trains_missing_baselines(
    tmp_path, snakemake, job_counts
):
    fake_cohort(tmp_path, n_slides=5, missing=0)
    config = {
        **DEMO,
        "tasks": DEMO["tasks"][:1],
        "features": {"encoders": ["efficientnet_lite0", "resnet50_trunc"]},
        "mil": {"methods": ["msm", "mhim_transmil", "mhim_abmil"], "folds": 3},
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "--configfile", str(cfg), "-p")
    counts = job_counts(proc.stdout)
    assert counts["extract"] == 5 * 2
    # msm, plus transmil and abmil trained as teachers of the MHIM methods, and the 2 MHIM methods
    assert counts["train"] == 2 * 5 * 3
    assert counts["evaluate"] == 2 * 5
    # each MHIM fold starts from the checkpoint of its own baseline's same fold
    teachers = re.findall(r"--method (mhim_\w+) .*?--teacher-init (\S+)", proc.stdout)
    assert len(teachers) == 12
    for method, teacher in teachers:
        fold = re.search(r"fold(\d+)$", teacher).group(1)
        assert teacher.endswith(f"/{method.removeprefix('mhim_')}/fold{fold}")


def test_duplicate_slide_ids_are_an_error_naming_both_files(tmp_path, snakemake, job_counts):
    fake_cohort(tmp_path, n_slides=3, missing=0)
    other = tmp_path / "demo" / "data" / "slides" / "batch2" / "case001_a.ndpi"
    other.parent.mkdir()
    other.touch()
    proc = snakemake(
        tmp_path, "-n", "--configfile", str(REPO / "workflow" / "demo.yaml"), check=False
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "two slides have the same id" in text
    assert "demo/data/slides/case001_a.svs and demo/data/slides/batch2/case001_a.ndpi" in text


def test_symlink_loop_in_slides_folder_is_walked_once(tmp_path, snakemake, job_counts):
    ids = fake_cohort(tmp_path, n_slides=3, missing=0)
    slides = tmp_path / "demo" / "data" / "slides"
    (slides / "loop").symlink_to(slides, target_is_directory=True)
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "workflow" / "demo.yaml"))
    assert job_counts(proc.stdout)["tile"] == len(ids)
    assert "same id" not in proc.stdout + proc.stderr


def test_slide_name_with_braces_is_rejected_at_startup_naming_the_file(tmp_path, snakemake):
    fake_cohort(tmp_path, n_slides=2, missing=0)
    (tmp_path / "demo" / "data" / "slides" / "b{1}.svs").touch()
    proc = snakemake(
        tmp_path, "-n", "--configfile", str(REPO / "workflow" / "demo.yaml"), check=False
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "cannot use in output paths: demo/data/slides/b{1}.svs. Rename them" in text
    assert "WildcardError" not in text and "Traceback" not in text


def test_discovery_recurses_skips_other_files_groups_dicom_and_reads_slide_sheet(
    tmp_path, snakemake, job_counts
):
    fake_cohort(tmp_path, n_slides=2, missing=0)
    slides = tmp_path / "demo" / "data" / "slides"
    (slides / "gdc-uuid").mkdir()
    (slides / "gdc-uuid" / "case002_a.SVS").touch()  # extensions match case-insensitively
    (slides / "notes.txt").touch()
    (slides / ".hidden.svs").touch()
    dicom = slides / "case003_a"
    dicom.mkdir()
    for i in range(3):
        (dicom / f"level{i}.dcm").touch()
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("slide_id,mpp\ncase001_a,0.2525\n")
    proc = snakemake(
        tmp_path,
        "-n",
        "-p",
        "--configfile",
        str(REPO / "workflow" / "demo.yaml"),
        "--config",
        f"slide_sheet={sheet}",
    )
    assert job_counts(proc.stdout)["tile"] == 4
    commands = dict(re.findall(r"wsi-mil tile (\S+) (-o [^\n]*)", proc.stdout))
    assert sorted(commands) == [
        "demo/data/slides/case000_a.svs",
        "demo/data/slides/case001_a.svs",
        "demo/data/slides/case003_a/level0.dcm",
        "demo/data/slides/gdc-uuid/case002_a.SVS",
    ]
    # the slide sheet's MPP reaches exactly its slide
    assert "--mpp 0.2525" in commands["demo/data/slides/case001_a.svs"]
    assert "--mpp" not in commands["demo/data/slides/case000_a.svs"]


def test_invalid_config_is_one_clear_line_per_problem(tmp_path, snakemake, job_counts):
    fake_cohort(tmp_path, n_slides=2, missing=0)
    proc = snakemake(
        tmp_path,
        "-n",
        "--configfile",
        str(REPO / "workflow" / "demo.yaml"),
        "--config",
        "tiling={'patch_size': 'big', 'colour': 1}",
        check=False,
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "'tiling.patch_size' = 'big': expected integer" in text
    assert "unknown key 'tiling.colour'" in text


def test_unknown_method_is_one_line_listing_the_registered_ones(tmp_path, snakemake):
    """The workflow checks method names against pipeline.methods, the table the models use."""
    from pipeline.methods import METHODS

    fake_cohort(tmp_path, n_slides=2, missing=0)
    proc = snakemake(
        tmp_path,
        "-n",
        "--configfile",
        str(REPO / "workflow" / "demo.yaml"),
        "--config",
        "mil={'methods': ['abmil', 'mhim_ab']}",
        check=False,
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert f"'mil.methods' has 'mhim_ab': expected one of {', '.join(METHODS)}" in text


def test_teacher_checkpoint_files_are_declared_inputs_of_the_mhim_job(tmp_path, snakemake):
    """The MHIM job reads the baseline's model.pt and model.json; both are declared inputs."""
    fake_cohort(tmp_path, n_slides=3, missing=0)
    config = {**DEMO, "tasks": DEMO["tasks"][:1], "mil": {"methods": ["mhim_dsmil"], "folds": 2}}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "--configfile", str(cfg))
    jobs = proc.stdout.split("rule train:")[1:]
    (job,) = [j for j in jobs if "/mhim_dsmil/fold1/metrics.json" in j.split("log:")[0]]
    inputs = job.split("input:")[1].split("\n")[0].split(", ")
    task = DEMO["tasks"][0]["name"]
    teacher = f"demo/results/mil/{task}/{DEMO['features']['encoders'][0]}/dsmil/fold1"
    assert f"{teacher}/model.pt" in inputs and f"{teacher}/model.json" in inputs
    assert f"demo/results/splits/{task}.csv" in inputs
    assert f"demo/results/features/{DEMO['features']['encoders'][0]}/case002_a.zarr" in inputs


@pytest.mark.parametrize("rule_file", sorted((REPO / "workflow" / "rules").glob("*.smk")))
def test_every_rule_has_log_benchmark_conda_resources(rule_file):
    text = rule_file.read_text()
    rules = re.split(r"\nrule (\w+):", text)[1:]
    for name, body in zip(rules[::2], rules[1::2], strict=True):
        for directive in ("log:", "benchmark:", "conda:", "resources:", "threads:"):
            assert f"    {directive}" in body, f"rule {name} lacks {directive}"
        assert "mem_mb=" in body and "runtime=" in body, name
        shell = body.split("    shell:")[1]
        assert re.match(r'\s*\(?\s*"wsi-mil \w', shell), f"rule {name} does not call wsi-mil"


def test_snakemake_lint_passes(tmp_path, snakemake):
    fake_cohort(tmp_path, n_slides=2, missing=0)
    proc = snakemake(tmp_path, "--lint", "--configfile", str(REPO / "workflow" / "demo.yaml"))
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_viewer_off_leaves_no_viewer_job(tmp_path, snakemake, job_counts):
    fake_cohort(tmp_path, n_slides=3, missing=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**DEMO, "viewer": {"enabled": False}}))
    counts = job_counts(snakemake(tmp_path, "-n", "--configfile", str(cfg)).stdout)
    assert counts["report"] == 1
    assert not {"viewer_tiles", "geojson", "viewer"} & set(counts)


def test_missing_viewer_library_stops_the_run_before_it_starts(tmp_path, snakemake, monkeypatch):
    fake_cohort(tmp_path, n_slides=3, missing=0)
    monkeypatch.setenv("WSI_MIL_OPENSEADRAGON", str(tmp_path / "nowhere"))
    demo = str(REPO / "workflow" / "demo.yaml")
    proc = snakemake(tmp_path, "-n", "--configfile", demo, check=False)
    assert proc.returncode != 0
    assert "OpenSeadragon is not installed" in proc.stdout + proc.stderr
    assert "make venv" in proc.stdout + proc.stderr
