"""The report's heatmaps section from folders on disk (no workflow run): methods paired baseline-first,
every slide's heatmap and gallery linked URL-encoded, failures shown with their reason, localisation
summarised into report/localisation.csv."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.report.heatmaps import method_order, section


def test_each_baseline_is_followed_by_its_mhim_version():
    methods = ["abmil", "transmil", "mhim_abmil", "mhim_transmil", "dsmil"]
    assert method_order(methods) == ["abmil", "mhim_abmil", "transmil", "mhim_transmil", "dsmil"]
    assert method_order(["mhim_abmil", "abmil"]) == ["abmil", "mhim_abmil"]


def _folder(results: Path, method: str, slides: list[str], failed: dict, auc: float) -> str:
    rel = f"heatmaps/t 1/enc/{method}"
    folder = results / rel
    folder.mkdir(parents=True)
    entries = {}
    for s in slides:
        cv2.imwrite(str(folder / f"{s}.png"), np.full((40, 60, 3), 200, np.uint8))
        cv2.imwrite(str(folder / f"{s}_gallery.png"), np.zeros((20, 20, 3), np.uint8))
        entries[s] = {"fold": 1, "label": "tumor", "prediction": 0.9, "png": f"{s}.png"}
        entries[s]["gallery"] = f"{s}_gallery.png"
    summary = {"attention": {"n_slides": 2, "median": auc, "min": auc - 0.1, "max": auc + 0.05}}
    index = {"slides": entries, "failed": failed, "localisation": summary}
    (folder / "index.json").write_text(json.dumps(index))
    return rel


def test_section_links_every_heatmap_and_writes_the_localisation_csv(tmp_path):
    results = tmp_path / "results"
    slides = ["S#1", "S 2"]  # characters that must be URL-encoded in a link
    folders = [
        _folder(results, "mhim_abmil", slides, {"S3": "S3: features unreadable"}, 0.9),
        _folder(results, "abmil", slides, {}, 0.8),
    ]
    out = results / "report" / "index.html"
    out.parent.mkdir()
    html = section(results, folders, out, qc={})
    assert html.index("<th>abmil</th>") < html.index("<th>mhim_abmil</th>")  # baseline first
    assert html.index("<td>abmil</td>") < html.index("<td>mhim_abmil</td>")  # in both tables
    for method in ("abmil", "mhim_abmil"):
        assert f'href="../heatmaps/t%201/enc/{method}/S%231.png"' in html
        assert f'href="../heatmaps/t%201/enc/{method}/S%202_gallery.png"' in html
    assert "S3: features unreadable" in html
    table = pd.read_csv(results / "report" / "localisation.csv")
    assert table.set_index("method").loc["abmil", "median"] == 0.8
    assert list(table["score"]) == ["attention", "attention"]


def test_no_heatmap_folders_no_section(tmp_path):
    assert section(tmp_path, [], tmp_path / "index.html", {}) == ""
    assert not (tmp_path / "localisation.csv").exists()
