"""What a serving run keeps while it runs: each request's progress, and each engine instance's queues.

Token accounting of one request (prompt p, outputs n, prefix hit h): positions 0..p-1 are the prompt;
``computed`` positions have KV (it starts at h). While ``computed < target`` the request is in
prefill (``target`` = p; after a recompute preemption, p + emitted). The step that brings
``computed`` to ``target`` emits one token. A decode step feeds ``1 + d`` positions (the last token
and d draft tokens), accepts ``a <= d`` of the drafts and emits ``a + 1`` tokens. The request is done
when ``emitted == n``; its KV then held ``p + n - 1`` positions (the last token is never fed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from moesim.serving.kv import KvLayout, KvPool


class Req:
    """One request's progress (mutable engine state)."""

    __slots__ = ("arrival_s", "computed", "device", "emitted", "finish_s", "first_s", "hit", "id",
                 "kv_blocks", "last_emit_s", "output", "preemptions", "prefill_s", "prompt", "status",
                 "target")

    def __init__(self, rid: int, prompt: int, output: int, hit: int, arrival_s: float):
        self.id, self.prompt, self.output, self.hit = rid, prompt, output, hit
        self.arrival_s = arrival_s
        self.target = prompt
        self.computed = hit
        self.emitted = 0
        self.device: int | None = None
        self.kv_blocks = 0
        self.first_s = self.finish_s = self.last_emit_s = float("nan")
        self.prefill_s = 0.0
        self.preemptions = 0
        self.status = "waiting"

    @property
    def in_prefill(self) -> bool:
        return self.computed < self.target

    def wanted(self, draft_tokens: int) -> int:
        """Positions the next step would compute: the rest of the prefill, or 1 + draft tokens."""
        if self.in_prefill:
            return self.target - self.computed
        return 1 + min(draft_tokens, max(0, self.output - self.emitted - 1))

    def max_tokens(self) -> int:
        """A bound on the KV positions it ever holds: prompt + outputs (it holds prompt + outputs - 1,
        and a decode step's drafts never pass its last token)."""
        return self.prompt + self.output


@dataclass(frozen=True)
class Work:
    """``tokens`` positions of ``req`` computed in one step, from position ``req.computed``."""

    req: Req
    tokens: int
    prefill: bool


@dataclass
class StepLog:
    """Per step of an instance (lists, turned into arrays at the end)."""

    start_s: list[float] = field(default_factory=list)
    dur_s: list[float] = field(default_factory=list)
    prefill_tokens: list[int] = field(default_factory=list)
    decode_tokens: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    kv_used_blocks: list[int] = field(default_factory=list)
    in_system: list[int] = field(default_factory=list)
    """Requests anywhere in the system (every instance's queues) when the step started ..."""
    in_system_end: list[int] = field(default_factory=list)
    """... and when it ended, before its finished requests left."""


class Instance:
    """One engine: a group of GPUs stepping in lockstep (all of them when colocated; the prefill or
    decode group when disaggregated), with its queues and KV pools."""

    def __init__(self, role: str, devices: tuple[str, ...], pools: list[KvPool], layout: KvLayout,
                 pricer: Any, token_budget: int, max_seqs: int):
        self.role = role
        self.devices = devices
        self.pools = pools
        self.layout = layout
        self.pricer = pricer
        self.token_budget = token_budget
        self.max_seqs = max_seqs
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.swapped: deque[Req] = deque()
        self.seqs = [0] * len(devices)
        """Running requests per device (``max_seqs`` bounds it)."""
        self.pending_s = 0.0
        """Swap copies the next step waits for (vLLM v0 swaps before the forward pass)."""
        self.preemptions = 0
        self.wake: Any = None
        self.log = StepLog()

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def used_blocks(self) -> int:
        return sum(p.used_blocks for p in self.pools)

    def capacity_blocks(self) -> int:
        return sum(p.capacity_blocks for p in self.pools)

    def fits(self, req: Req, device: int, new_tokens: int) -> bool:
        """Whether ``req`` (holding ``req.kv_blocks`` there) can grow by ``new_tokens`` positions on
        ``device``."""
        need = self.layout.blocks(req.computed + new_tokens) - (req.kv_blocks if req.device == device else 0)
        return need <= self.pools[device].free_blocks

    def hold(self, req: Req, tokens: int) -> None:
        """Set ``req``'s holding on its device to the blocks of ``tokens`` positions."""
        assert req.device is not None
        blocks = self.layout.blocks(tokens)
        self.pools[req.device].resize(req.kv_blocks, blocks)
        req.kv_blocks = blocks

    def release(self, req: Req) -> None:
        if req.device is not None and req.kv_blocks:
            self.pools[req.device].resize(req.kv_blocks, 0)
        req.kv_blocks = 0

    def start(self, req: Req, device: int) -> None:
        """``req`` joins the running list on ``device``."""
        req.device, req.status = device, "running"
        self.running.append(req)
        self.seqs[device] += 1

    def stop(self, req: Req) -> None:
        """``req`` leaves the running list (finished, handed off or preempted)."""
        self.running.remove(req)
        assert req.device is not None
        self.seqs[req.device] -= 1
