"""Disaggregated prefill and decode (DistServe, Splitwise; how large DeepSeek-V3 deployments run):
two instances on separate GPU groups. The prefill instance runs chunked prefills and emits each
request's first token; the request's KV cache then moves over the links between the groups (priced
on the topology) to a decode GPU that has room for it, and the decode instance runs its decode steps.
Each instance schedules like :class:`moesim.serving.schedulers.chunked.ChunkedPrefill` (a decode
instance only prefills again what a recompute preemption dropped)."""

from __future__ import annotations

from moesim.serving.schedulers.chunked import ChunkedPrefill


class Disaggregated(ChunkedPrefill):
    name = "disaggregated"
    roles: tuple[str, ...] = ("prefill", "decode")
