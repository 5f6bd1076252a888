"""What every scheduler shares: the per-step context, preemption, and the two halves of a vLLM-style
step (running requests first, then admissions from the queues).

vLLM's v1 scheduler (vllm-project/vllm @00024d3, ``vllm/v1/core/sched/scheduler.py``,
``Scheduler.schedule``): each running request in admission order gets ``min(tokens it still needs,
budget left)`` tokens; when its KV blocks cannot be allocated, the last running request is preempted
(itself if it is the last) and its blocks freed; waiting requests are admitted in arrival order only
when nothing was preempted, while budget, sequence slots and KV blocks last. Here each GPU of an
instance is one data-parallel attention rank with its own token budget, sequence slots and KV pool;
the ranks step together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from moesim.serving.state import Instance, Req, Work


@dataclass
class StepContext:
    """What a scheduler may do besides picking work: preempt (the engine's policy) and start a
    remote-KV admission (disaggregated decode)."""

    draft_tokens: int
    preempt: Callable[[Instance, Req], None]
    admit_remote: Callable[[Instance, Req, int], None]
    budget: list[int] = field(default_factory=list)
    preempted: bool = False


class Scheduler(Protocol):
    """A scheduling policy (one file + one entry in ``SCHEDULERS``)."""

    name: str
    roles: tuple[str, ...]
    """Instances it runs: ``("both",)`` colocated, ``("prefill", "decode")`` disaggregated."""

    def pick(self, inst: Instance, ctx: StepContext) -> list[Work]: ...


def victim_after(inst: Instance, index: int, device: int) -> Req | None:
    """The last running request on ``device`` after position ``index`` (not scheduled this step)."""
    for j in range(len(inst.running) - 1, index, -1):
        if inst.running[j].device == device and inst.running[j].status == "running":
            return inst.running[j]
    return None


def schedule_running(inst: Instance, ctx: StepContext, *, prefill: bool = True,
                     decode: bool = True) -> list[Work]:
    """Running requests in admission order, each ``min(wanted, budget left)`` tokens, preempting
    the last running request of the same GPU while its KV does not fit (only ``prefill`` or
    ``decode`` work when one is False)."""
    work: list[Work] = []
    i = 0
    while i < len(inst.running):
        req = inst.running[i]
        g = req.device
        assert g is not None
        if req.status != "running" or (req.in_prefill and not prefill) or (not req.in_prefill and not decode):
            i += 1  # a KV cache still on its way, or work of the other kind
            continue
        n = min(req.wanted(ctx.draft_tokens), ctx.budget[g])
        if n <= 0:
            i += 1
            continue
        while not inst.fits(req, g, n):
            victim = victim_after(inst, i, g) or req
            ctx.preempt(inst, victim)
            ctx.preempted = True
            if victim is req:
                break
        if req.status != "running":
            continue  # preempted itself: the next request slid into position i
        inst.hold(req, req.computed + n)
        work.append(Work(req, n, req.in_prefill))
        ctx.budget[g] -= n
        i += 1
    return work


def pick_device(inst: Instance, req: Req, ctx: StepContext, tokens: int, *, need_budget: bool = True,
                clip: bool = True) -> int | None:
    """The GPU a queued request starts on: a free sequence slot, budget left (when it computes), and
    room for the KV of ``tokens`` more positions (``clip``: only as many as the budget left); the one
    with the most free blocks (lowest index on ties)."""
    best, best_free = None, -1
    for g, pool in enumerate(inst.pools):
        if inst.seqs[g] >= inst.max_seqs or (need_budget and ctx.budget[g] <= 0):
            continue
        n = min(tokens, ctx.budget[g]) if need_budget and clip else tokens
        if pool.free_blocks > best_free and inst.layout.blocks(req.computed + n) <= pool.free_blocks:
            best, best_free = g, pool.free_blocks
    return best


def admit_swapped(inst: Instance, ctx: StepContext) -> list[Work]:
    """Swapped-out requests, oldest first, back on their own GPU while they fit (their KV is copied
    back before the step: :attr:`Instance.pending_s`)."""
    work: list[Work] = []
    while inst.swapped:
        req = inst.swapped[0]
        g = req.device
        assert g is not None
        n = min(req.wanted(ctx.draft_tokens), ctx.budget[g])
        if inst.seqs[g] >= inst.max_seqs or n <= 0 or not inst.fits(req, g, n):
            break
        inst.swapped.popleft()
        inst.pending_s += inst.pricer.swap_s(inst.devices[g], inst.layout.blocks(req.computed)
                                             * inst.layout.block_bytes())
        inst.start(req, g)
        inst.hold(req, req.computed + n)
        work.append(Work(req, n, req.in_prefill))
        ctx.budget[g] -= n
    return work


def admit_waiting(inst: Instance, ctx: StepContext, *, chunked: bool) -> list[Work]:
    """The waiting queue in order while requests fit; ``chunked=False`` admits only whole prefills
    (one may exceed the budget on a GPU with nothing else this step)."""
    work: list[Work] = []
    while inst.waiting:
        req = inst.waiting[0]
        if req.status == "remote":  # disaggregated decode: its KV comes from a prefill GPU
            g = pick_device(inst, req, ctx, 0, need_budget=False)
            if g is None:
                break
            inst.waiting.popleft()
            ctx.admit_remote(inst, req, g)
            continue
        want = req.wanted(ctx.draft_tokens)
        g = pick_device(inst, req, ctx, want, clip=chunked)
        if g is None:
            break
        n = min(want, ctx.budget[g])
        if not chunked:
            if n < want and ctx.budget[g] < inst.token_budget:
                break  # a whole prompt that does not fit what is left of this step's budget
            n = want
        inst.waiting.popleft()
        inst.start(req, g)
        inst.hold(req, req.computed + n)
        work.append(Work(req, n, True))
        ctx.budget[g] -= n
    return work
