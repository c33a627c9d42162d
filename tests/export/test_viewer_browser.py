"""The viewer page in a real headless Chromium, from disk (file://) and behind `python -m http.server`:
no console errors, the heatmap is drawn over the planted tumour in the top colour, and zooming in asks
for the deepest level of tiles, which exist on disk.

Chromium is Debian's package, driven by Playwright; when it is missing and we run as root with
apt-get (CI), it is installed like the SLURM test installs its packages; otherwise the test skips.
Where Debian's firefox-esr is installed, the page is also opened from disk in Firefox (WebDriver BiDi,
spoken by Firefox itself, driven from node: ``firefox_bidi.js``); skipped otherwise.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.store import write_json
from pipeline.viewer import browser

pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
pytestmark = pytest.mark.timeout(300)


def _chromium() -> str:
    path = browser.find_chromium()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("needs Debian's chromium (apt-get install chromium, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    return browser.find_chromium() or pytest.skip("chromium did not install")


@pytest.fixture(scope="module")
def site(scored_slide, tmp_path_factory) -> dict:
    """The planted slide's pyramid, GeoJSON and viewer pages, laid out as in a results folder."""
    s = scored_slide
    root = tmp_path_factory.mktemp("viewer_site")
    write_json(s["heatmaps"] / "index.json", {"slides": {"G1": {}}})
    geojson = root / "geojson" / "tumour"
    assert (
        main(
            [
                "export-geojson",
                str(s["tiles"]),
                "--heatmaps",
                str(s["heatmaps"]),
                "-o",
                str(geojson),
            ]
        )
        == 0
    )
    pyramids = root / "report" / "slides"
    assert main(["viewer-tiles", str(s["tiles"]), "-o", str(pyramids / "G1")]) == 0
    pages = root / "report" / "viewer" / "tumour"
    args = ["viewer", "--task", "tumour", "--heatmaps", str(s["heatmaps"])]
    args += ["--tiles-dir", str(s["tiles"].parent), "--geojson", str(geojson)]
    assert main([*args, "--pyramids", str(pyramids), "-o", str(pages)]) == 0
    return {"root": root, "report": root / "report", "page": pages / "G1.html"}


@pytest.fixture(scope="module")
def chromium():
    with browser.browser(_chromium()) as handle:
        yield handle


def _pixel(page, x: float, y: float) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    return np.asarray(image)[int(round(y)), int(round(x))].astype(int)


def _centre(scored_slide, index: int) -> tuple[float, float]:
    side = int(scored_slide["attrs"]["level0_patch_size"])
    x, y = scored_slide["coords"][index]
    return x + side / 2, y + side / 2


def _check_heatmap_and_zoom(page, scored_slide, site) -> None:
    # the heatmap alone, fully opaque: the planted tumour's top patch is jet's dark red end and
    # the lowest-scoring tissue patch its blue end
    page.evaluate(
        "() => { const m = window.wsiMil; m.state.opacity = 1; m.state.tissue = false; m.draw(); }"
    )
    attention = scored_slide["attention"]
    top, low = int(np.argmax(attention)), int(np.argmin(attention))
    assert scored_slide["truth_fraction"][top] == 1.0 and scored_slide["truth_fraction"][low] == 0.0
    for index, (r_min, b_max) in ((top, (100, 60)), (low, (None, None))):
        at = page.evaluate(
            "([x, y]) => window.wsiMil.toPage(x, y)", list(_centre(scored_slide, index))
        )
        r, g, b = _pixel(page, at["x"], at["y"])
        if index == top:
            assert r >= r_min and g <= 60 and b <= b_max, (r, g, b)
        else:
            assert b >= 100 and r <= 60, (r, g, b)
    # hovering the top patch names its level-0 coordinates and scores
    at = page.evaluate("([x, y]) => window.wsiMil.toPage(x, y)", list(_centre(scored_slide, top)))
    page.mouse.move(at["x"], at["y"])
    tip = page.locator("#tip")
    assert tip.is_visible()
    x, y = (int(v) for v in scored_slide["coords"][top])
    lines = tip.inner_text().splitlines()
    assert f"at ({x}, {y}) level 0" in lines[0]
    shown = float(next(v for v in lines if v.startswith("enc/abmil: attention = ")).split("= ")[1])
    assert shown == pytest.approx(float(attention[top]), rel=1e-4)
    # the first top-k thumbnail pans and zooms to the top patch: the deepest written level is
    # requested and every tile drawn exists
    pyramid = page.evaluate("window.wsiMil.pyramid")
    zoom = page.evaluate("window.wsiMil.viewer.viewport.getZoom()")
    page.locator("#topk img").first.click()
    browser.wait_drawn(page)
    assert page.evaluate("window.wsiMil.state.focus") == top
    assert page.evaluate("window.wsiMil.viewer.viewport.getZoom()") > 2 * zoom
    loaded = page.evaluate("window.wsiMil.state.loaded")
    assert page.evaluate("window.wsiMil.state.failed") == []
    assert max(level for level, _ in loaded) == pyramid["top_level"]
    for _, url in loaded:  # relative to the page, in both settings
        assert (site["page"].parent / unquote(url)).resolve().is_file(), url


def test_page_from_disk_draws_the_heatmap_and_deep_tiles(chromium, site, scored_slide):
    page, console = browser.open_page(chromium, site["page"].as_uri())
    assert console.errors == []
    layers = page.evaluate("window.wsiMil.data.layers.map(l => l.id)")
    assert layers == ["enc/abmil: attention", "enc/abmil: instance_prob"]
    _check_heatmap_and_zoom(page, scored_slide, site)
    assert console.errors == []
    index, console = chromium.new_page(), browser.Console()
    index.on("pageerror", lambda e: console.errors.append(str(e)))
    index.goto(site["page"].with_name("index.html").as_uri())
    assert index.locator('a[href="G1.html"]').count() == 1 and console.errors == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_behind_a_static_http_server(chromium, site, scored_slide):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site["root"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/report/viewer/tumour/G1.html"
        page, console = browser.open_page(chromium, url)
        _check_heatmap_and_zoom(page, scored_slide, site)
        assert console.errors == []
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_cohort_index_sorts_by_a_clicked_column(chromium, tmp_path):
    from pipeline.viewer.assets import copy_assets
    from pipeline.viewer.data import SlideEntry
    from pipeline.viewer.pages import index_html

    entries = [
        SlideEntry("S1", "cv", "C1", "tumor", 0, {"enc/abmil": 0.7}, {"enc/abmil": 0.3}),
        SlideEntry("S2", "cv", "C2", "normal", 1, {"enc/abmil": 0.1}, {"enc/abmil": 0.1}),
        SlideEntry("S3", "external", "C3", None, None, {"enc/abmil": 0.4}, {"enc/abmil": None}),
    ]
    copy_assets(tmp_path)
    (tmp_path / "index.html").write_text(index_html("tumour", entries, ["enc/abmil"]))
    page, errors = chromium.new_page(), []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((tmp_path / "index.html").as_uri())

    def order() -> list[str]:
        return page.locator("#cohort tbody tr td:first-child").all_inner_texts()

    page.locator("th", has_text="prediction enc/abmil").click()
    assert order() == ["S2", "S3", "S1"]
    page.locator("th", has_text="prediction enc/abmil").click()
    assert order() == ["S1", "S3", "S2"]
    page.locator("th", has_text="error enc/abmil").click()
    assert order() == ["S2", "S1", "S3"]  # no error (external, unlabelled) sorts last
    assert errors == []


def test_page_from_disk_in_firefox(site, tmp_path):
    """Firefox (Debian's firefox-esr, over WebDriver BiDi from node): from file:// the tiles load,
    the deepest level is reached after panning to the top patch, nothing fails or logs an error."""
    firefox = shutil.which("firefox-esr") or shutil.which("firefox")
    node = shutil.which("node")
    if not firefox or not node:
        pytest.skip("needs Debian's firefox-esr and node (apt-get install firefox-esr nodejs)")
    import json

    port = _free_port()
    (tmp_path / "profile").mkdir()
    browser_proc = subprocess.Popen(
        [firefox, "--headless", "--no-remote", "--profile", str(tmp_path / "profile"),
         "--remote-debugging-port", str(port)],
        env={**os.environ, "HOME": str(tmp_path), "MOZ_CRASHREPORTER_DISABLE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        script = Path(__file__).with_name("firefox_bidi.js")
        proc = subprocess.run(
            [node, "--experimental-websocket", str(script), str(port), site["page"].as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        browser_proc.terminate()
        browser_proc.wait(timeout=20)
    assert "error" not in result, result
    assert result["errors"] == [] and result["after"]["failed"] == []
    assert result["before"]["levels"] and max(result["after"]["levels"]) == result["after"]["top"]
    for level in result["after"]["levels"]:
        assert 0 <= level <= result["after"]["top"]
