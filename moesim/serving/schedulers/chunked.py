"""Continuous batching with chunked prefill, decode first (vLLM v1, SGLang): every step serves the
running requests in admission order (decodes and unfinished prompt chunks) out of a per-GPU token
budget, then admits waiting requests with what is left, cutting a long prompt into chunks."""

from __future__ import annotations

from moesim.serving.schedulers.base import StepContext, admit_swapped, admit_waiting, schedule_running
from moesim.serving.state import Instance, Work


class ChunkedPrefill:
    name = "chunked"
    roles: tuple[str, ...] = ("both",)

    def pick(self, inst: Instance, ctx: StepContext) -> list[Work]:
        work = schedule_running(inst, ctx)
        if not ctx.preempted:
            work += admit_swapped(inst, ctx)
            work += admit_waiting(inst, ctx, chunked=True)
        return work
