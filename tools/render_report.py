"""Render an HTML report to a PNG with a headless browser, and check its figures.

    python tools/render_report.py demo_output/report.html report.png [--width 1200]

Uses the first browser found: ``$TWINJAX_BROWSER``, then ``chromium``,
``chromium-browser``, ``google-chrome``, ``google-chrome-stable``, ``chrome``,
``headless_shell`` on the PATH. The browser loads the file, runs with no network
(the report is self-contained: figures are embedded ``data:`` PNGs) and writes a
full-height screenshot. The script then reports the screenshot's size and the
fraction of strongly coloured pixels (the report's text and tables are black and grey;
matplotlib's lines, bands and bars are coloured), so a report whose figures did not
render is caught.

Exit status: 0 rendered (and, with ``--min-colour``, enough colour), 2 no browser
found, 1 rendering failed. Not a project dependency: ``make test`` skips the test
that uses it when no browser is installed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

CANDIDATES = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "headless_shell",
)


def find_browser() -> str | None:
    """Path of a Chromium-family browser, or None."""
    env = os.environ.get("TWINJAX_BROWSER")
    if env and shutil.which(env):
        return shutil.which(env)
    for c in CANDIDATES:
        p = shutil.which(c)
        if p:
            return p
    return None


def _page_height(html: str, width: int) -> int:
    """A generous page height: text lines plus the embedded images' heights."""
    import base64
    import struct

    h = 400
    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html):
        head = base64.b64decode(b64[:64] + "=" * (-len(b64[:64]) % 4))
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            w, hh = struct.unpack(">II", head[16:24])
            h += int(hh * min(1.0, (width - 40) / max(w, 1))) + 60
    h += 26 * html.count("<tr") + 60 * html.count("<h2") + 30 * html.count("<li")
    return min(max(int(1.1 * h), 800), 16000)


def render(html_path, png_path, width: int = 1200, browser: str | None = None) -> dict:
    """Screenshot ``html_path`` to ``png_path``; returns a small description.

    Raises:
        FileNotFoundError: no browser found (or the HTML file is missing).
        RuntimeError: the browser failed or wrote no image.
    """
    html_path = pathlib.Path(html_path).resolve()
    png_path = pathlib.Path(png_path).resolve()
    if not html_path.exists():
        raise FileNotFoundError(html_path)
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no headless browser found (install chromium)")
    height = _page_height(html_path.read_text(errors="replace"), width)
    with tempfile.TemporaryDirectory() as prof:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={prof}",
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            html_path.as_uri(),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if not png_path.exists() or png_path.stat().st_size == 0:
        raise RuntimeError(f"{browser} wrote no screenshot (rc {r.returncode}): {r.stderr[-2000:]}")
    return dict(browser=browser, png=str(png_path), **_inspect(png_path))


def _inspect(png_path) -> dict:
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(png_path)[..., :3]  # floats in [0, 1]
    sat = img.max(-1) - img.min(-1)
    coloured = sat > 0.25
    rows = np.flatnonzero(coloured.any(axis=1))
    return dict(
        width=int(img.shape[1]),
        height=int(img.shape[0]),
        colour_fraction=float(coloured.mean()),
        coloured_rows=int(rows.size),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument(
        "--min-colour",
        type=float,
        default=0.0,
        help="fail unless at least this fraction of pixels is strongly coloured",
    )
    a = ap.parse_args(argv)
    try:
        info = render(a.html, a.png, a.width)
    except FileNotFoundError as err:
        print(f"render_report: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"render_report: {err}", file=sys.stderr)
        return 1
    print(info)
    if info["colour_fraction"] < a.min_colour:
        print(
            f"render_report: only {info['colour_fraction']:.4f} of the pixels are coloured "
            f"(< {a.min_colour}): figures missing?",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
