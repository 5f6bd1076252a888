"""What every verb shares: JSON output, progress bars, help formatting."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples in ``epilog`` as written and shows each flag's default."""


def add_verb(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
             examples: str) -> argparse.ArgumentParser:
    """A sub-parser whose ``--help`` ends with worked examples."""
    return sub.add_parser(name, help=help, description=description, epilog=f"examples:\n{examples}",
                          formatter_class=HelpFormatter)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")


def to_jsonable(obj: Any) -> Any:
    """numpy/pandas scalars and arrays to plain Python; non-finite floats to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_schema(verb: str) -> str:
    """The ``schema`` every ``--json`` object carries: ``moesim-<verb>/1`` (bump on breaking changes)."""
    return f"moesim-{verb}/1"


def print_json(obj: Any, *, verb: str | None = None) -> None:
    """One JSON object on stdout; with ``verb``, ``"schema": "moesim-<verb>/1"`` comes first."""
    if verb is not None and isinstance(obj, dict):
        obj = {"schema": json_schema(verb), **obj}
    json.dump(to_jsonable(obj), sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


def progress(items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True) -> Iterable[T]:
    """A progress bar on stderr when it is a terminal; the items unchanged otherwise."""
    if not enabled or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False)
