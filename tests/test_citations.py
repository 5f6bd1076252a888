"""No file in the repository cites notes that live outside it (the workplace's reference notes or its
design card): a citation names the primary source (datasheet, paper, repository file, web page)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import REPO

# Built from pieces so that this file does not match itself.
OUTSIDE = re.compile("reference/" + r"\s*[\w-]+\.md" + "|" + "DESIGN" + r"\.md")
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}


def repository_files(root: Path) -> list[Path]:
    """Tracked and new (not ignored) files; every file outside build folders without git."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], check=True, capture_output=True).stdout
        return [root / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in root.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(root).parts)]


def outside_citations(files: list[Path]) -> list[str]:
    """``path:line: text`` for every line of a text file that cites an outside note."""
    hits = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:  # deleted in the work tree but still in the index
            continue
        if b"\0" in data:  # binary (npz, images)
            continue
        text = data.decode("utf-8", errors="replace")
        for m in OUTSIDE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            hits.append(f"{path.relative_to(REPO)}:{line}: {m.group(0)!r}")
    return hits


def test_no_file_cites_notes_outside_the_repository() -> None:
    files = repository_files(REPO)
    assert any(p.name == "devices.yaml" for p in files), "the file list misses hardware/devices.yaml"
    hits = outside_citations(files)
    assert not hits, "cite the primary source instead:\n" + "\n".join(hits)


def test_the_check_finds_a_citation_split_over_lines(tmp_path: Path) -> None:
    bad = tmp_path / "x.md"
    bad.write_text("fine\nsee reference/\n" + "hard" + "ware.md §1\n")
    good = tmp_path / "y.md"
    good.write_text("see the NVIDIA H100 datasheet; reference implementation in kernels/reference.py\n")
    assert len(OUTSIDE.findall(bad.read_text())) == 1
    assert not OUTSIDE.findall(good.read_text())
