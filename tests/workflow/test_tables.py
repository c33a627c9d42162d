"""User tables are read one way by the workflow and the commands: a table saved by Excel as
"CSV UTF-8" (byte-order mark), with CRLF line ends, spaces around headers and values, or ids in
another Unicode normal form gives the same rows, the same DAG and the same cross-validation as the
clean table."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import TableError
from pipeline.tables import read_table

REPO = Path(__file__).resolve().parents[2]
NFC = unicodedata.normalize("NFC", "cäse3_a")
NFD = unicodedata.normalize("NFD", "cäse3_a")
IDS = ["case0_a", "case1_a", "case2_a", NFC, "case4_a", "case5_a"]


def _clean_text(ids=IDS) -> str:
    rows = [f"{sid},{sid.split('_')[0]},{['normal', 'tumor'][i % 2]}" for i, sid in enumerate(ids)]
    return "slide_id,case_id,label\n" + "\n".join(rows) + "\n"


def _messy_bytes(ids=IDS) -> bytes:
    """The same table as Excel and hand edits leave it: BOM, CRLF, padded header and values, NFD."""
    lines = [" slide_id , case_id,label "]
    for i, sid in enumerate(ids):
        sid = unicodedata.normalize("NFD", sid)
        lines.append(f"{sid} , {sid.split('_')[0]},{['normal', 'tumor'][i % 2]} ")
    return b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_messy_table_reads_as_the_clean_one(tmp_path):
    clean, messy = tmp_path / "clean.csv", tmp_path / "messy.csv"
    clean.write_text(_clean_text())
    messy.write_bytes(_messy_bytes())
    a, b = read_table(clean, ["slide_id", "label"]), read_table(messy, ["slide_id", "label"])
    assert b.columns == ("slide_id", "case_id", "label")
    assert b.rows == a.rows and b.column("slide_id") == IDS
    assert NFD not in b.column("slide_id")
    # what `wsi-mil train/cv` build their task from
    from pipeline.mil.task_tables import read_table as task_table

    pd.testing.assert_frame_equal(
        task_table(messy, ["slide_id", "label"], "labels"),
        task_table(clean, ["slide_id", "label"], "labels"),
    )


def test_table_problems_are_one_line_naming_file_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfslide,label\r\nS1,a\r\n")
    with pytest.raises(TableError) as info:
        read_table(path, ["slide_id", "label"], "labels")
    assert info.value.line() == (
        f"ERROR {path}: labels has no column slide_id (it has: slide, label). "
        "Add a header row with slide_id, label."
    )
    path.write_bytes("slide_id,label\nS\xe41,a\n".encode("latin-1"))
    with pytest.raises(TableError) as info:
        read_table(path, ["slide_id"], "labels")
    assert info.value.line() == (
        f"ERROR {path}: labels is not UTF-8 text (byte 0xe4 at offset 16). "
        "Save it as 'CSV UTF-8' (Excel) or UTF-8 CSV."
    )
    with pytest.raises(TableError, match="not found"):
        read_table(tmp_path / "none.csv")


def _cohort(root: Path, labels: bytes | str) -> None:
    slides = root / "demo" / "data" / "slides"
    slides.mkdir(parents=True)
    for sid in IDS:
        # the file name in NFD (as macOS writes it) for the ä slide, NFC for the others
        (slides / f"{unicodedata.normalize('NFD', sid)}.svs").touch()
    data = root / "demo" / "data"
    if isinstance(labels, bytes):
        (data / "labels.csv").write_bytes(labels)
    else:
        (data / "labels.csv").write_text(labels)
    (data / "survival.csv").write_text(
        "case_id,time,event\n"
        + "".join(f"{s.split('_')[0]},{5 + i},{i % 2}\n" for i, s in enumerate(IDS))
    )
    (data / "masks").mkdir(exist_ok=True)  # the demo config measures localisation from these
    (data / "masks" / "masks.json").write_text('{"slides": {}}')


@pytest.mark.parametrize("kind", ["clean", "messy"])
def test_workflow_plans_the_same_jobs_for_a_messy_table(tmp_path, snakemake, job_counts, kind):
    _cohort(tmp_path, _clean_text() if kind == "clean" else _messy_bytes())
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "workflow" / "demo.yaml"))
    text = proc.stdout + proc.stderr
    assert "not found in" not in text and "has no column" not in text
    demo = yaml.safe_load((REPO / "workflow" / "demo.yaml").read_text())
    counts = job_counts(proc.stdout)
    assert counts["tile"] == len(IDS)
    assert counts["extract"] == len(IDS) * len(demo["features"]["encoders"])


def test_cv_gives_the_same_result_for_the_messy_table(tmp_path):
    from pipeline.store import write_store

    rng = np.random.default_rng(0)
    features = tmp_path / "features"
    for i, sid in enumerate(IDS * 1):
        x = rng.normal(size=(12, 8)) + (2.0 if i % 2 else 0.0)
        coords = np.stack([np.arange(12) * 256, np.zeros(12)], axis=1).astype(np.int32)
        write_store(
            features / f"{sid}.zarr", {"features": x.astype(np.float16), "coords": coords}, {}
        )
    clean, messy = tmp_path / "clean.csv", tmp_path / "messy.csv"
    clean.write_text(_clean_text())
    messy.write_bytes(_messy_bytes())
    results = {}
    for name, table in (("clean", clean), ("messy", messy)):
        out = tmp_path / name
        argv = ["cv", "--features", features, "--labels", table, "--method", "abmil"]
        # a handful of cases: too few for the default inner selection
        extra = ["--folds", 2, "-o", out, "epochs=2", "selection=holdout"]
        assert main([str(a) for a in [*argv, *extra]]) == 0
        results[name] = out
    for name in ("splits.csv", "abmil/fold0/predictions.csv", "abmil/fold1/predictions.csv"):
        a = pd.read_csv(results["clean"] / name)
        b = pd.read_csv(results["messy"] / name)
        pd.testing.assert_frame_equal(a, b)
    predicted = pd.read_csv(results["messy"] / "abmil/fold0/predictions.csv")
    assert NFC in set(
        pd.read_csv(results["messy"] / "abmil/fold1/predictions.csv")["slide_id"]
    ) | set(predicted["slide_id"])
