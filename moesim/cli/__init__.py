"""The ``moesim`` command: one module per verb, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from moesim import __version__
from moesim.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, UserError

VERBS = ("hw", "model", "trace", "simulate", "plan", "calibrate", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)
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
    return int(code or EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
