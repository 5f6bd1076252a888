"""What every verb shares: the argument parser, typed flag values, output paths, JSON, help formatting.

Every flag is range-checked where it is parsed: ``type=positive_int`` and friends raise
``argparse.ArgumentTypeError``, which :class:`ArgumentParser` prints as one line
``moesim: error: argument --batch-size: expected ...`` with exit code 2. Output paths are checked
at parse time too (a folder given for a file, a parent that cannot be created), so a bad ``--out``
fails before the work, not after it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from moesim.errors import EXIT_BAD_INPUT, UserError
from moesim.jsonable import to_jsonable
from moesim.limits import Limit

# "-5", "-0.5", "-1e3", "-5GiB", "-2 us": negative numbers and quantities are values, never flags
_NEGATIVE_VALUE = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:\s*[A-Za-zµμ/]+)?$")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with moesim's conventions.

    ``--gpu-memory -5GiB`` reads ``-5GiB`` as the flag's value (then rejected by its type with a clear
    message) instead of as an unknown flag; a usage error is one line on stderr and exit code 2 (the
    usage itself is in ``--help``). Sub-parsers are of this class too.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"moesim: error: {message} (see '{self.prog} --help')\n")


# ---- flag types: each returns the parsed value or raises ArgumentTypeError with what was expected -----


def _int(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def int_range(minimum: int, maximum: int | Limit | None = None) -> Callable[[str], int]:
    """A whole number ``>= minimum`` and, when given, ``<= maximum`` (a number or a moesim.limits Limit)."""

    def parse(text: str) -> int:
        what = f"a whole number >= {minimum}"
        if isinstance(maximum, int):
            what = f"a whole number from {minimum} to {maximum:,}"
        value = _int(text, what)
        if value < minimum or (isinstance(maximum, int) and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if isinstance(maximum, Limit):
            try:
                maximum.check(value)
            except UserError as e:
                raise argparse.ArgumentTypeError(e.message) from None
        return value

    parse.__name__ = "whole number"  # argparse names the type in some messages
    return parse


positive_int = int_range(1)
"""Counts that must be at least 1: batch sizes, steps, windows, sequence lengths."""
nonnegative_int = int_range(0)
"""Seeds and counts where 0 means none or all."""


def finite_positive_float(text: str) -> float:
    """A finite number > 0 (time limits in seconds): ``nan``, ``inf``, ``0`` and negatives are refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number greater than 0, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """A fraction strictly between 0 and 1 (a split of a trace's rows)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (exclusive), got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """A number in (0, 1] (a share or a total variation)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def fraction_list(text: str) -> list[float]:
    """Comma-separated numbers in (0, 1]: ``0.05,0.1,0.2``."""
    try:
        return [unit_fraction(x) for x in text.split(",") if x.strip()] or [unit_fraction("")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers in (0, 1], got {text!r}") from None


def quantity(kind: str) -> Callable[[str], str]:
    """Text such as ``20GiB`` that parses as a quantity of ``kind`` (a key of ``units.PHYSICAL``).

    The text is returned unchanged (the verb parses it again where it uses it); a negative, infinite,
    unitless or out-of-range value is refused here.
    """
    from moesim.units import PHYSICAL, parse_physical

    def parse(text: str) -> str:
        try:
            parse_physical(text, kind)
        except UserError as e:
            raise argparse.ArgumentTypeError(e.message) from None
        return text

    parse.__name__ = PHYSICAL[kind].what
    return parse


def int_list(minimum: int = 1, maximum: int | None = None) -> Callable[[str], list[int]]:
    """Comma-separated whole numbers, each ``>= minimum`` (and ``<= maximum``): ``2,4,8``."""

    def parse(text: str) -> list[int]:
        what = f"comma-separated whole numbers >= {minimum}" + (f" and <= {maximum:,}" if maximum else "")
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not values or any(v < minimum or (maximum is not None and v > maximum) for v in values):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return values

    parse.__name__ = "list of whole numbers"
    return parse


# ---- output paths ------------------------------------------------------------------------------------


def check_output(path: str | Path, *, flag: str, folder: bool = False) -> Path:
    """UserError unless ``path`` can be written as a file (or, with ``folder``, created as a folder).

    Refuses an existing folder where a file is expected (and a file where a folder is), and a
    missing parent that cannot be created (an ancestor is a file, or not writable). Call it before
    the work starts; the writers create missing parent folders themselves.
    """
    p = Path(path)
    if str(path).strip() == "":
        raise UserError("expected a path, got an empty text", field=flag)
    if p.is_dir() and not folder:
        raise UserError("expected a file to write, got a folder", file=p, field=flag)
    if p.exists() and folder and not p.is_dir():
        raise UserError("expected a folder to write into, got a file", file=p, field=flag)
    existing = p if folder and p.is_dir() else p.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create a folder inside {existing}, which is a file", file=p, field=flag)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {existing} (permission denied)", file=p, field=flag)
    return p


def output_file(text: str) -> str:
    """argparse type of a file to write (checked by :func:`check_output`); the text unchanged."""
    try:
        check_output(text, flag="")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def output_folder(text: str) -> str:
    """argparse type of a folder to write into (checked by :func:`check_output`); the text unchanged."""
    try:
        check_output(text, flag="", folder=True)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


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
