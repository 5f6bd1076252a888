"""The cell kinds a sweep spec may name: kind -> workflow function + parameter and metric schema.

A new kind is one module defining a :class:`~moesim.sweeps.schema.CellKind` and one line here.
"""

from __future__ import annotations

from moesim.sweeps.kinds.plan import PLAN
from moesim.sweeps.kinds.replan import REPLAN
from moesim.sweeps.kinds.serve import SERVE
from moesim.sweeps.kinds.simulate import SIMULATE
from moesim.sweeps.schema import CellKind

KINDS: dict[str, CellKind] = {
    "simulate": SIMULATE,
    "plan": PLAN,
    "serve": SERVE,
    "replan": REPLAN,
}

__all__ = ["KINDS"]
