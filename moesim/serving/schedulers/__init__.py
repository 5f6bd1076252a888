"""Scheduling policies of the serving engine, by name (a new policy = one file + one entry)."""

from __future__ import annotations

from moesim.errors import UserError
from moesim.serving.schedulers.base import Scheduler, StepContext
from moesim.serving.schedulers.chunked import ChunkedPrefill
from moesim.serving.schedulers.disaggregated import Disaggregated
from moesim.serving.schedulers.prefill_first import PrefillFirst

SCHEDULERS: dict[str, type] = {
    ChunkedPrefill.name: ChunkedPrefill,
    PrefillFirst.name: PrefillFirst,
    Disaggregated.name: Disaggregated,
}


def make_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise UserError(f"expected one of {', '.join(SCHEDULERS)}, got {name!r}",
                        field="--scheduler") from None


__all__ = ["SCHEDULERS", "Scheduler", "StepContext", "make_scheduler"]
