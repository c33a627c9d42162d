"""Driving a real headless Chromium over the viewer pages (the browser test and the README screenshot).

Playwright (PyPI) drives the system's Debian ``chromium`` (``executable_path``); its own browser
download is never used, so nothing is fetched at test time. :func:`open_page` loads a page, records
console errors and waits until the viewer has opened the slide and drawn every tile it asked for.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

#: Headless, no sandbox (root in CI containers), no GPU, and nothing that phones home.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")


def find_chromium() -> str | None:
    for name in CHROMIUM:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Console:
    """What a page said: console errors and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)


@contextmanager
def browser(executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        handle = p.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield handle
        finally:
            handle.close()


def open_page(handle, url: str, width: int = 1200, height: int = 800, timeout_ms: int = 30000):
    """A viewer page at ``url``, opened and fully drawn; returns ``(page, console)``."""
    page = handle.new_page(viewport={"width": width, "height": height})
    console = Console()
    page.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.errors.append(str(e)))
    page.goto(url)
    wait_drawn(page, timeout_ms)
    return page, console


def wait_drawn(page, timeout_ms: int = 30000) -> None:
    """Until the slide is open, every tile the current view needs is drawn and the view is still."""
    page.wait_for_timeout(250)  # let the viewer start the frame that asks for the new tiles
    page.wait_for_function(
        """() => {
          const m = window.wsiMil;
          if (!m || !m.state.opened) return false;
          const vp = m.viewer.viewport, item = m.viewer.world.getItemAt(0);
          const still = Math.abs(vp.getZoom(false) - vp.getZoom(true)) < 1e-9
            && vp.getCenter(false).distanceTo(vp.getCenter(true)) < 1e-12;
          return still && item.getFullyLoaded();
        }""",
        timeout=timeout_ms,
    )
