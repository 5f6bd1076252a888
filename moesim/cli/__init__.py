"""The ``moesim`` command: one module per verb, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from moesim import __version__
from moesim.cli.common import ArgumentParser
from moesim.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, UserError

# optional dependencies -> how to install them (a verb that needs one says so in one line)
_EXTRAS = {
    "torch": "pip install torch (or pip install 'moesim[kernels]' / 'moesim[record]')",
    "transformers": "pip install 'moesim[record]'",
    "triton": "pip install 'moesim[kernels]'",
    "pyarrow": "pip install pyarrow (or write a .csv instead)",
}

VERBS = ("hw", "model", "trace", "simulate", "plan", "calibrate", "report", "sweep", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="moesim",
        description="Simulate and plan Mixture-of-Experts placement, caching and offloading.",
        epilog="Run 'moesim VERB --help' for the flags of a verb, with examples.",
    )
    parser.add_argument("--version", action="version", version=f"moesim {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        importlib.import_module(f"moesim.cli.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a flag error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    try:
        code = args.func(args)
    except UserError as e:
        print(f"moesim: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_FAILURE
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root not in _EXTRAS:
            raise
        print(f"moesim: error: this needs {root}, which is not installed: {_EXTRAS[root]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return int(code or EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
