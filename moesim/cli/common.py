"""What every verb shares: JSON output and help formatting."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from moesim.jsonable import to_jsonable


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples in ``epilog`` as written and shows each flag's default."""


def add_verb(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
             examples: str) -> argparse.ArgumentParser:
    """A sub-parser whose ``--help`` ends with worked examples."""
    return sub.add_parser(name, help=help, description=description, epilog=f"examples:\n{examples}",
                          formatter_class=HelpFormatter)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")


def json_schema(verb: str) -> str:
    """The ``schema`` every ``--json`` object carries: ``moesim-<verb>/1`` (bump on breaking changes)."""
    return f"moesim-{verb}/1"


def print_json(obj: Any, *, verb: str | None = None) -> None:
    """One JSON object on stdout; with ``verb``, ``"schema": "moesim-<verb>/1"`` comes first."""
    if verb is not None and isinstance(obj, dict):
        obj = {"schema": json_schema(verb), **obj}
    json.dump(to_jsonable(obj), sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")
