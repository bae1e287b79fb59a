"""report.html rendered by a real browser: headless Chromium takes a screenshot of the page and
the test looks for what only a rendered page has — the mask colours of the decoded pictures and
the shaded table headers.

Skipped when no Chromium is installed (``apt-get install chromium``), except where
``WSSS_REQUIRE_BROWSER=1`` (CI sets it after installing Chromium) turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless flags for a sandboxed machine without a network (no background connections, no GPU).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_browser() -> str:
    path = os.environ.get("WSSS_BROWSER") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if path is None:
        message = "headless Chromium not found (apt-get install chromium, or set WSSS_BROWSER)"
        if os.environ.get("WSSS_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; WSSS_REQUIRE_BROWSER=1 requires it")
        pytest.skip(message)
    return path


def screenshot(browser: str, page: Path, out: Path, size: tuple[int, int]) -> np.ndarray:
    cmd = [
        browser,
        *FLAGS,
        f"--user-data-dir={out.parent / 'chromium-profile'}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={out}",
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and out.is_file(), f"chromium failed ({res.returncode}): {res.stderr[-2000:]}"
    return np.asarray(Image.open(out).convert("RGB"))


def _count(shot: np.ndarray, rgb: tuple[int, int, int], tol: int = 2) -> int:
    """Screen pixels within ``tol`` of colour ``rgb`` in every channel."""
    return int((np.abs(shot.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_report_renders_tables_and_pictures_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    browser = find_browser()
    page = write_report(run_dir, n_sample=4, n_extreme=2)
    shot = screenshot(browser, page, tmp_path / "report.png", (1300, 2600))
    assert shot.shape == (2600, 1300, 3)
    # Each 16x16 object of a 32x32 mask is drawn at 144/32 = 4.5x: about 72x72 screen pixels per
    # mask picture. Cats (VOC red) appear in images a and c, dogs (VOC green) in b and d, each in
    # the ground truth, pseudo-mask and prediction columns of several rows.
    cat, dog = _count(shot, (128, 0, 0)), _count(shot, (0, 128, 0))
    assert cat > 4 * 60 * 60 and dog > 3 * 60 * 60, (cat, dog)
    # table headers are shaded #f0f0f0: the stage, per-class and picture tables were laid out
    assert _count(shot, (240, 240, 240), tol=0) > 5000
    # and the page is not blank: plenty of dark text pixels
    assert (shot.max(axis=-1) < 80).sum() > 5000
