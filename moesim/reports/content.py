"""From finished grid cells to a :class:`Document`: the setup, placement, offloading, serving, timeline
and calibration sections, with a caption and the producing command on every figure and table.

Every number a table or figure shows is also emitted as a :class:`Record`, so ``results.csv``
holds exactly what the page shows. Numbers are taken from the cells unchanged (no rounding).
"""

from __future__ import annotations

from moesim.reports import grid as g
from moesim.reports.builder import Builder
from moesim.reports.document import Document, Section
from moesim.reports.section_offload import offload_section
from moesim.reports.section_placement import placement_section, timeline_section
from moesim.reports.section_replan import replan_section
from moesim.reports.section_serving import serving_section
from moesim.reports.section_setup import calibration_section, setup_section
from moesim.reports.sweep import Sweep


def build_document(sweep: Sweep, res: g.GridResult, *, command: str) -> Document:
    """The whole report for ``sweep`` from the finished cells in ``res``."""
    b = Builder(sweep, res, command)
    sections: list[Section] = [setup_section(b)]
    sections += [placement_section(b, s) for s in sweep.placement]
    sections += [offload_section(b, o) for o in sweep.offload]
    sections += [serving_section(b, v) for v in sweep.serving]
    sections += [replan_section(b, r) for r in sweep.replan]
    tl = timeline_section(b)
    if tl is not None:
        sections.append(tl)
    sections.append(calibration_section(b))
    repro = (
        f"Regenerate this report with `{command}`. Finished cells are cached beside it, keyed by a hash "
        "of the input files' contents, the cell's parameters and moesim's code, so a rerun only computes "
        "what changed.",
    )
    sections.append(Section("Reproduce", repro))
    return Document(sweep.title, command, tuple(sections), tuple(b.records), tuple(dict.fromkeys(b.notes)))
