"""Open a rendered report in headless Chromium: read the page's self-check and take a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    """Path of a Chromium binary on PATH (Debian's ``chromium`` first), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(frozen=True)
class PageCheck:
    status: str
    """``ok``, ``fail`` (the page's script found a broken image, empty table or error) or ``pending``."""
    images: str
    """``rendered/total``."""
    tables: int
    rows: int
    text: str
    dom: str


def check_page(html_path: str | Path, *, chromium: str, timeout_s: float = 120.0) -> PageCheck:
    """Load ``html_path`` and return what its inline self-check wrote into ``#selfcheck``."""
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="moesim-chromium-") as profile:
        proc = subprocess.run(
            [
                chromium,
                *_FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    dom = proc.stdout
    m = re.search(r'<pre id="selfcheck"([^>]*)>(.*?)</pre>', dom, re.S)
    if not m:
        return PageCheck("missing", "0/0", 0, 0, proc.stderr[-2000:], dom)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', m.group(1)))
    return PageCheck(
        attrs.get("status", "pending"),
        attrs.get("images", "0/0"),
        int(attrs.get("tables", 0)),
        int(attrs.get("rows", 0)),
        m.group(2),
        dom,
    )


def screenshot(
    html_path: str | Path,
    png_path: str | Path,
    *,
    chromium: str,
    width: int = 1280,
    height: int = 2400,
    timeout_s: float = 120.0,
) -> Path:
    """A PNG screenshot of the page's top ``width`` x ``height`` pixels."""
    url = Path(html_path).resolve().as_uri()
    png = Path(png_path).resolve()
    with tempfile.TemporaryDirectory(prefix="moesim-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                *_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={width},{height}",
                "--virtual-time-budget=10000",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    return png
