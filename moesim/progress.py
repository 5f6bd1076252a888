"""Progress bars on stderr for long work (the CLI's plans and the reports' cells)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True) -> Iterable[T]:
    """A progress bar on stderr when it is a terminal; the items unchanged otherwise."""
    if not enabled or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False)
