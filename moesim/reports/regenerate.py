"""Regenerate the reports kept in the repository's ``reports/`` folder (run from the repository root).

    python -m moesim.reports.regenerate            # every report
    python -m moesim.reports.regenerate default    # only the one from the shipped traces

A study report is exactly ``moesim report --config reports/NAME.yaml --out reports/NAME``; a sweep
report (``reports/NAME.yaml`` is a ``moesim sweep`` spec) is ``moesim sweep reports/NAME.yaml --out
reports/NAME/dataset`` then ``moesim report --from reports/NAME/dataset --out reports/NAME``. The
files fix every seed, so regenerating gives the same numbers. The ``shared`` report reads the
real traces from ``../shared/traces`` and is skipped, with a message, when they are absent.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from moesim.errors import EXIT_BAD_INPUT, EXIT_FAILURE, UserError

REPORTS = ("default", "shared", "sweep-offload")
SWEEPS = ("sweep-offload",)
"""Reports made from a ``moesim sweep`` dataset (kept beside them, in ``reports/NAME/dataset``)."""


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


def regenerate_sweep(spec: Path, out: Path) -> int:
    """``moesim sweep SPEC --out OUT/dataset`` then ``moesim report --from OUT/dataset --out OUT``."""
    from moesim.reports.dataset_report import make_dataset_report
    from moesim.sweeps import load_spec, run_sweep

    dataset = out / "dataset"
    command = shlex.join(["moesim", "report", "--from", str(dataset), "--out", str(out)])
    try:
        done = run_sweep(load_spec(spec), dataset, command=shlex.join(["moesim", "sweep", str(spec), "--out",
                                                                        str(dataset)]))
        doc, _ = make_dataset_report(dataset, out, command=command)
    except UserError as e:
        print(f"moesim: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {out}/index.html, report.md, results.csv and {len(doc.figures)} plots ({done.cells} cells: "
          f"{done.run.computed} computed, {done.run.skipped} in the dataset)")
    return EXIT_FAILURE if done.run.failed else 0


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
        make = regenerate_sweep if name in SWEEPS else regenerate
        worst = max(worst, make(config, root / name))
    return worst


if __name__ == "__main__":
    sys.exit(main())
