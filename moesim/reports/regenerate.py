"""Regenerate the reports kept in the repository's ``reports/`` folder (run from the repository root).

    python -m moesim.reports.regenerate            # both reports
    python -m moesim.reports.regenerate default    # only the one from the shipped traces

Each report is exactly ``moesim report --config reports/NAME.yaml --out reports/NAME``; the sweep
files fix every seed, so regenerating gives the same numbers. The ``shared`` report reads the
real traces from ``../shared/traces`` and is skipped, with a message, when they are absent.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from moesim.errors import EXIT_BAD_INPUT, EXIT_FAILURE, UserError

REPORTS = ("default", "shared")


def regenerate(config: Path, out: Path) -> int:
    """``moesim report --config CONFIG --out OUT`` through the library; its exit code."""
    from moesim.reports.build import make_report
    from moesim.reports.sweep import load_sweep

    command = shlex.join(["moesim", "report", "--config", str(config), "--out", str(out)])
    try:
        run = make_report(load_sweep(config), out, command=command)
    except UserError as e:
        print(f"moesim: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {out}/index.html, report.md, results.csv and {len(run.document.figures)} plots "
          f"({run.cells} cells: {run.computed} computed, {run.cached} cached)")
    for note in run.document.notes:
        print(f"moesim: warning: not computed: {note}", file=sys.stderr)
    return EXIT_FAILURE if run.failed else 0


def main(argv: list[str] | None = None) -> int:
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
        worst = max(worst, regenerate(config, root / name))
    return worst


if __name__ == "__main__":
    sys.exit(main())
