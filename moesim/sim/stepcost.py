"""Op times of a chunk of steps, all devices and layers at once (numpy), from the CostModel.

These are the durations the engine's events take; nothing here advances simulated time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.cost.a2a import AllToAllSpec
from moesim.parallel import Parallelism
from moesim.sim.a2atimes import AllToAllTimer
from moesim.sim.dispatch import Dispatch
from moesim.sim.expert_tp import ExpertGroups
from moesim.sim.precost import PreCoster, PreParts, device_token_counts
from moesim.specs.runtime import Runtime
from moesim.vocab import AllToAll

__all__ = ["ChunkCosts", "StepCoster", "device_token_counts"]


@dataclass(frozen=True)
class ChunkCosts:
    """Seconds for steps ``[first, first + S)``: ``pre[s, l, g]`` attention, router, shared experts
    and permute/combine of every model layer (dense layers: attention + dense FFN);
    ``expert[s, m, g]`` the grouped expert call of MoE layer m on device g; ``dispatch[s, m]`` and
    ``combine[s, m]`` the all-to-alls; ``*_chunk`` the same for one of ``chunks`` micro-batches."""

    first: int
    pair_copies: np.ndarray | None
    """[S, L, G, G] token copies the dispatch sends from device i to device j (zero diagonal: a
    device's own tokens; the combine sends them back); None when the dispatch was counted per node
    (``Dispatch.node_rows``)."""
    pre: np.ndarray
    expert: np.ndarray
    dispatch: np.ndarray
    combine: np.ndarray
    expert_chunk: np.ndarray | None = None
    dispatch_chunk: np.ndarray | None = None
    combine_chunk: np.ndarray | None = None
    parts: PreParts | None = None
    """``pre`` by part (attention, dense, router, LM head, TP collectives, overhead)."""
    expert_gather: np.ndarray | None = None
    """[S, L, G] the EP group's all-gather before its experts, with tensor parallelism inside experts
    (:mod:`moesim.sim.expert_tp`); None without."""
    expert_reduce: np.ndarray | None = None
    """[S, L, G] the EP group's reduce-scatter of the partial expert outputs; None without."""
    expert_group_bytes: np.ndarray | None = None
    """[S, L, groups, 2] bytes of each group's all-gather and reduce-scatter buffers."""

    def expert_comm_step(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step ``i``'s expert-TP collectives: all-gather and reduce-scatter seconds [L, G], bytes
        [L, groups, 2]."""
        assert self.expert_gather is not None and self.expert_reduce is not None
        assert self.expert_group_bytes is not None
        return self.expert_gather[i], self.expert_reduce[i], self.expert_group_bytes[i]

    def expert_phase(self) -> np.ndarray:
        """[S, L] the experts phase: the slowest GPU's expert call (with its group's all-gather and
        reduce-scatter around it under expert TP)."""
        if self.expert_gather is None or self.expert_reduce is None:
            return self.expert.max(axis=2)
        return (self.expert_gather + self.expert + self.expert_reduce).max(axis=2)


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows and the inverse (``uniq[inverse] == rows``) of small non-negative integer
    rows. When a row fits in 62 bits it is packed into one int64 key and the keys are hashed
    (``pandas.factorize``, first-appearance order, no sort); otherwise ``np.unique(axis=0)``."""
    j = rows.shape[1]
    top = int(rows.max(initial=0))
    bits = max(1, top.bit_length())
    if j * bits > 62 or rows.min(initial=0) < 0:
        uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
        return uniq, inverse.ravel()
    import pandas as pd

    shifts = (np.arange(j, dtype=np.int64) * bits)[None, :]
    keys = (rows.astype(np.int64) << shifts).sum(axis=1)
    inverse, uniq_keys = pd.factorize(keys, sort=False)
    uniq = (np.asarray(uniq_keys, dtype=np.int64)[:, None] >> shifts) & ((1 << bits) - 1)
    return uniq.astype(rows.dtype, copy=False), np.asarray(inverse, dtype=np.int64)


class StepCoster:
    """Turns a chunk of dispatched steps into :class:`ChunkCosts` with a few batched cost calls."""

    def __init__(self, cost: Any, devices: tuple[str, ...], *, phase: str, overlap_chunks: int = 1,
                 a2a: AllToAllSpec | None = None, parallel: Parallelism | None = None,
                 runtime: Runtime | None = None, expert_calls: bool = True):
        """``expert_calls``: price the lockstep grouped expert calls (an offloaded run times its
        calls itself; its ``ChunkCosts.expert`` is then zeros)."""
        self.cost = cost
        self.expert_calls = expert_calls
        self.pre = PreCoster(cost, devices, phase=phase, parallel=parallel, runtime=runtime)
        p = self.pre.parallel
        self.groups = (ExpertGroups(p.expert_tp, cost.model.num_experts, tuple(p.expert_groups(devices)))
                       if p.expert_tp > 1 else None)
        self.model = cost.model
        self.devices = devices
        self.phase = phase
        self.chunks = overlap_chunks
        self.moe_layers = np.asarray(self.model.moe_layers, dtype=np.int64)
        self.is_moe = np.zeros(self.model.num_layers, dtype=bool)
        self.is_moe[self.moe_layers] = True
        self.a2a = a2a or AllToAllSpec.for_model(self.model, AllToAll.FLAT)
        self.timer = AllToAllTimer(cost, devices, self.a2a)
        self.mirrored = self.timer.mirrored
        # node-level all-to-all (per device and node, not per pair) where every link carries whole
        # node blocks, when the compiled counting is installed (its numpy form measured no faster
        # than the pair path at batch 256); other topologies keep the [G, G] pair matrices
        from moesim.sim import counting

        self.node_blocks = (cost.node_blocks(devices) if len(devices) > 1 and hasattr(cost, "node_blocks")
                            and counting.available() else None)
        self._expert_memo: dict[int, dict[bytes, float]] = {}
        self._packed_memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        """Per spec: (sorted packed row keys, their times): the memo without Python loops."""
        specs: dict[int, int] = {}
        self._spec_index = np.array(
            [specs.setdefault(id(cost.cluster.device(d).spec), len(specs)) for d in devices], dtype=np.int64)
        self._spec_device = {i: devices[int(np.argmax(self._spec_index == i))] for i in range(len(specs))}

    def pre_times(self, batch: np.ndarray, context: np.ndarray) -> np.ndarray:
        """[S, num_layers, G] the per-device work before dispatch (and the whole of a dense layer)."""
        return self.pre.parts(batch, context).total()

    def expert_times(self, slot_tokens: np.ndarray) -> np.ndarray:
        """[S, L, G] grouped expert calls for ``slot_tokens`` [S, L, G, slots] (GPUs).

        A grouped call's time depends on the device's spec and the multiset of its experts' token
        counts, so rows are sorted and de-duplicated per spec before the cost model sees them
        (decode steps repeat the same few rows thousands of times)."""
        S, L, G, J = slot_tokens.shape
        if not self.expert_calls:
            return np.zeros((S, L, G))
        rows = np.sort(slot_tokens.reshape(S * L, G, J), axis=2)
        out = np.zeros((S * L, G))
        for spec in np.unique(self._spec_index):
            cols = np.flatnonzero(self._spec_index == spec)
            sub = rows[:, cols, :].reshape(-1, J)
            uniq, inverse = unique_rows(sub)
            times = self._expert_rows(int(spec), uniq)
            out[:, cols] = times[inverse.ravel()].reshape(S * L, len(cols))
        return out.reshape(S, L, G)

    def _expert_rows(self, spec: int, rows: np.ndarray) -> np.ndarray:
        """Times of sorted token rows on a device of ``spec``, remembered across chunks (the cost
        model is asked only about rows it has not priced yet)."""
        j = rows.shape[1]
        bits = 62 // max(j, 1)
        if len(rows) and bits and int(rows.max()) < (1 << bits) and int(rows.min()) >= 0:
            return self._expert_rows_packed(spec, rows, bits)
        memo = self._expert_memo.setdefault(spec, {})
        keys = np.ascontiguousarray(rows, dtype=np.int64).view(np.dtype((np.void, 8 * rows.shape[1]))).ravel()
        keys = keys.tolist()
        new = [i for i, k in enumerate(keys) if k not in memo]
        if new:
            dev = self._spec_device[spec]
            fresh = np.asarray(self._compute([dev] * len(new), rows[new]))
            memo.update(zip((keys[i] for i in new), fresh.tolist(), strict=True))
        return np.array([memo[k] for k in keys])

    def _compute(self, devs: list[str], rows: np.ndarray) -> np.ndarray:
        """The cost model's grouped calls (one GPU's 1/expert_tp shard of each expert under expert TP)."""
        if self.groups is None:
            return self.cost.expert_compute_batch_s(devs, rows)
        return self.cost.expert_compute_batch_s(devs, rows, tp=self.groups.expert_tp)

    def _expert_tp(self, slot_tokens: np.ndarray, out: dict[str, Any]) -> None:
        """Under expert TP: the expert calls on the group's gathered copies and the group's all-gather
        and reduce-scatter (:mod:`moesim.sim.expert_tp`) into ``out`` (the ChunkCosts fields)."""
        g, a = self.groups, self.a2a
        assert g is not None
        gathered = g.gathered(slot_tokens)
        copies = g.group_copies(slot_tokens).astype(float)
        nbytes = np.stack([copies * a.dispatch_bytes, copies * a.combine_bytes], axis=-1)
        out.update(expert=self.expert_times(gathered), expert_group_bytes=nbytes,
                   expert_gather=g.collective_s(self.cost, nbytes[..., 0], "all_gather"),
                   expert_reduce=g.collective_s(self.cost, nbytes[..., 1], "reduce_scatter"))
        if self.chunks > 1:  # a micro-batch's collectives run with its expert call
            n = self.chunks
            out["expert_chunk"] = (self.expert_times(gathered / n)
                                   + g.collective_s(self.cost, nbytes[..., 0] / n, "all_gather")
                                   + g.collective_s(self.cost, nbytes[..., 1] / n, "reduce_scatter"))

    def _expert_rows_packed(self, spec: int, rows: np.ndarray, bits: int) -> np.ndarray:
        """:meth:`_expert_rows` with each row packed into one int64 (``bits`` per entry) and the
        memo a sorted key array searched with ``np.searchsorted``."""
        shifts = (np.arange(rows.shape[1], dtype=np.int64) * bits)[None, :]
        keys = (rows.astype(np.int64) << shifts).sum(axis=1)
        known, times = self._packed_memo.get(spec, (np.zeros(0, dtype=np.int64), np.zeros(0)))
        pos = np.minimum(np.searchsorted(known, keys), max(len(known) - 1, 0))
        found = known[pos] == keys if len(known) else np.zeros(len(keys), dtype=bool)
        if not found.all():
            new_keys, first = np.unique(keys[~found], return_index=True)
            new_rows = rows[~found][first]
            dev = self._spec_device[spec]
            fresh = np.asarray(self._compute([dev] * len(new_rows), new_rows), dtype=float)
            known = np.concatenate([known, new_keys])
            order = np.argsort(known, kind="stable")
            known, times = known[order], np.concatenate([times, fresh])[order]
            self._packed_memo[spec] = (known, times)
            pos = np.searchsorted(known, keys)
        return times[pos]

    def chunk(self, first: int, d: Dispatch, batch: np.ndarray, context: np.ndarray,
              outputs: np.ndarray | None = None, parts: PreParts | None = None) -> ChunkCosts:
        """The costs of a chunk of dispatched steps; ``outputs`` [S]: tokens the LM head scores; ``parts``
        replaces the pre-dispatch work priced from ``batch`` and ``context`` when given (a serving step
        prices each GPU's own requests)."""
        parts = self.pre.parts(batch, context, outputs) if parts is None else parts
        if d.pair_tokens is None:
            return self._chunk_nodes(first, d, parts)
        pairs = d.pair_tokens
        diag = np.arange(pairs.shape[2])
        pairs[:, :, diag, diag] = 0
        a = self.a2a
        back = pairs.transpose(0, 1, 3, 2)
        out = dict(first=first, pair_copies=pairs, pre=parts.total(), parts=parts,
                   expert=self.expert_times(d.slot_tokens),
                   dispatch=self.timer.pairs(pairs, a.dispatch_bytes))
        out["combine"] = out["dispatch"] if self.mirrored else self.timer.pairs(back, a.combine_bytes)
        if self.chunks > 1:
            n = self.chunks
            out["expert_chunk"] = self.expert_times(d.slot_tokens / n)
            out["dispatch_chunk"] = self.timer.pairs(pairs, a.dispatch_bytes, n)
            out["combine_chunk"] = (out["dispatch_chunk"] if self.mirrored
                                    else self.timer.pairs(back, a.combine_bytes, n))
        if self.groups is not None and self.expert_calls:
            self._expert_tp(d.slot_tokens, out)
        return ChunkCosts(**out)

    def _chunk_nodes(self, first: int, d: Dispatch, parts: PreParts) -> ChunkCosts:
        """:meth:`chunk` from node-level dispatch counts (the combine is the transposed matrix:
        its per-node rows are the dispatch's per-node columns, and the other way round)."""
        assert d.node_rows is not None and d.node_cols is not None
        rows, cols, a = d.node_rows, d.node_cols, self.a2a  # token copies; bytes = copies * copy bytes
        out = dict(first=first, pair_copies=None, pre=parts.total(), parts=parts,
                   expert=self.expert_times(d.slot_tokens),
                   dispatch=self.timer.nodes(rows, cols, a.dispatch_bytes))
        out["combine"] = out["dispatch"] if self.mirrored else self.timer.combine_nodes(rows, cols)
        if self.chunks > 1:
            n = self.chunks
            out["expert_chunk"] = self.expert_times(d.slot_tokens / n)
            out["dispatch_chunk"] = self.timer.nodes(rows, cols, a.dispatch_bytes, n)
            out["combine_chunk"] = (out["dispatch_chunk"] if self.mirrored
                                    else self.timer.combine_nodes(rows, cols, n))
        if self.groups is not None and self.expert_calls:
            self._expert_tp(d.slot_tokens, out)
        return ChunkCosts(**out)
