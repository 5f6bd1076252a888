"""Prefill-first (vLLM's v0 default without chunked prefill, Orca-style iteration batching): a step
is either whole prompts of newly admitted requests, when any fit the token budget and the KV pools,
or one decode token (plus drafts) for every running request; prefills and decodes never mix, so a
long prompt stalls every running request's next token."""

from __future__ import annotations

from moesim.serving.schedulers.base import StepContext, admit_swapped, admit_waiting, schedule_running
from moesim.serving.state import Instance, Work


class PrefillFirst:
    name = "prefill-first"
    roles: tuple[str, ...] = ("both",)

    def pick(self, inst: Instance, ctx: StepContext) -> list[Work]:
        # a recompute-preempted request re-enters through the waiting queue as a whole prefill
        work = admit_waiting(inst, ctx, chunked=False)
        if work:
            return work
        work = schedule_running(inst, ctx)
        if not ctx.preempted:
            work += admit_swapped(inst, ctx)
        return work
