"""A page rendered by a real browser: Debian's chromium, headless (.ci/run installs it), to a screenshot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1280, 2000)) -> np.ndarray:
    """The screenshot of `page` (a local HTML file) at `size`, as RGB pixels (also left at `png`)."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium; .ci/run does)")
    profile = png.parent / f"{png.stem}-profile"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
               page.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and png.is_file(), result.stderr[-3000:]
    return np.asarray(Image.open(png).convert("RGB"))


def assert_not_blank(pixels: np.ndarray) -> None:
    """A rendered page, not an empty or one-colour one: many colours, and ink (dark text) over a good
    part of its rows."""
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    inked_rows = (pixels.min(axis=2) < 100).any(axis=1).mean()
    assert colours > 200 and inked_rows > 0.1, (colours, inked_rows)
