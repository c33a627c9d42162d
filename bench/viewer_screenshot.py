"""The README's viewer screenshot: one slide page of a finished run, drawn in headless Chromium.

    .venv/bin/python bench/viewer_screenshot.py RESULTS/report/viewer/tumour/SLIDE.html docs/viewer.png

The page is opened from disk as a user would, the first heatmap layer shown at the given opacity, and
the picture saved as a 256-colour PNG (small enough to commit).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from pipeline.viewer import browser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--opacity", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=640)
    args = parser.parse_args()
    from PIL import Image

    executable = browser.find_chromium()
    if executable is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    with browser.browser(executable) as handle:
        page, console = browser.open_page(
            handle, args.page.resolve().as_uri(), args.width, args.height
        )
        page.evaluate(
            f"() => {{ window.wsiMil.state.opacity = {args.opacity}; window.wsiMil.draw(); }}"
        )
        png = page.screenshot()
    if console.errors:
        raise SystemExit(f"the page logged errors: {console.errors}")
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256)
    image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
