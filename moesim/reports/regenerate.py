"""Regenerate the reports kept in the repository's ``reports/`` folder (run from the repository root).

    python -m moesim.reports.regenerate            # both reports
    python -m moesim.reports.regenerate default    # only the one from the shipped traces

Each report is exactly ``moesim report --config reports/NAME.yaml --out reports/NAME``; the sweep
files fix every seed, so regenerating gives the same numbers. The ``shared`` report reads the
real traces from ``../shared/traces`` and is skipped, with a message, when they are absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPORTS = ("default", "shared")


def main(argv: list[str] | None = None) -> int:
    from moesim.cli import main as cli_main

    names = list(argv if argv is not None else sys.argv[1:]) or list(REPORTS)
    root = Path("reports")
    if not (root / "default.yaml").exists():
        print("moesim: error: run from the repository root (reports/default.yaml not found)", file=sys.stderr)
        return 2
    worst = 0
    for name in names:
        config = root / f"{name}.yaml"
        if not config.exists():
            print(
                f"moesim: error: {config}: no such sweep file (expected one of {', '.join(REPORTS)})",
                file=sys.stderr,
            )
            return 2
        if name == "shared" and not Path("../shared/traces").is_dir():
            print("skipping reports/shared: ../shared/traces not found", file=sys.stderr)
            continue
        code = cli_main(["report", "--config", str(config), "--out", str(root / name)])
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())
