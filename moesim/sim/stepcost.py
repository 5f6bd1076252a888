"""Op times of a chunk of steps, all devices and layers at once (numpy), from the CostModel.

These are the durations the engine's events take; nothing here advances simulated time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from moesim.cost.a2a import AllToAllSpec
from moesim.parallel import Parallelism
from moesim.sim.a2atimes import AllToAllTimer
from moesim.sim.dispatch import Dispatch
from moesim.sim.expert_memo import KeyedTimes, unique_rows
from moesim.sim.expert_tp import ExpertGroups
from moesim.sim.linktimes import NodeTiming
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

    @cached_property
    def pre(self) -> np.ndarray:
        """[S, L, G] the pre-dispatch seconds, summed from :attr:`parts` when first asked (the
        compiled record reads the parts per layer kind and never needs them)."""
        assert self.parts is not None
        return self.parts.total()

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


class _Declined(Exception):
    """The cost object declined to price expert calls from aggregates."""


class StepCoster:
    """Turns a chunk of dispatched steps into :class:`ChunkCosts` with a few batched cost calls."""

    def __init__(self, cost: Any, devices: tuple[str, ...], *, phase: str, overlap_chunks: int = 1,
                 a2a: AllToAllSpec | None = None, parallel: Parallelism | None = None,
                 runtime: Runtime | None = None, expert_calls: bool = True):
        """``expert_calls``: price the lockstep grouped expert calls (an offloaded run times its
        calls itself; its ``ChunkCosts.expert`` is then zeros)."""
        self.cost = cost
        self.expert_calls = expert_calls
        # node-level all-to-all (per device and node, not per pair) where every link carries whole
        # node blocks, when the compiled counting is installed (its numpy form measured no faster
        # than the pair path at batch 256); other topologies keep the [G, G] pair matrices
        from moesim.sim import counting

        self.node_blocks = (cost.node_blocks(devices) if len(devices) > 1 and hasattr(cost, "node_blocks")
                            and counting.available() else None)
        # such runs compile their counting anyway: the pre-dispatch lookups may be compiled too (a
        # run that compiles nothing else would pay ~0.2 s loading numba for them)
        self.pre = PreCoster(cost, devices, phase=phase, parallel=parallel, runtime=runtime,
                             compiled_lookups=self.node_blocks is not None)
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
        self._expert_memo: dict[int, dict[bytes, float]] = {}
        self._keyed: dict[tuple[int, int], KeyedTimes] = {}
        self._aggregated: dict[int, KeyedTimes] = {}
        self._aggregates_ok: dict[int, bool] = {}
        """Per spec: whether the closed form matched the priced rows (checked on first use)."""
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

    def tile_rows(self) -> np.ndarray | None:
        """[G] rows each device's expert GEMMs pad to, where the cost object prices expert calls from
        aggregates (:meth:`expert_times_aggregated`)."""
        if not (hasattr(self.cost, "expert_aggregates_s") and hasattr(self.cost, "expert_tile_rows")):
            return None
        return np.array([self.cost.expert_tile_rows(d) for d in self.devices], dtype=np.int64)

    def expert_times_aggregated(self, d: Dispatch) -> np.ndarray | None:
        """:meth:`expert_times` from each device's padded rows, active experts and tokens packed in
        one int64 (``d.aggregate_keys``, :meth:`moesim.cost.CostModel.expert_aggregates_s`), each
        distinct triple priced once. None where the cost object declines or the pass packed none;
        the first time per spec the result is compared, bit for bit, with the cost of the calls'
        sorted token rows (what :meth:`expert_times` asks) and the closed form is dropped for the run
        if any differs."""
        if not self.expert_calls:
            return np.zeros(d.device_tokens.shape)
        keys = d.aggregate_keys
        if keys is None or self.groups is not None:
            return None
        specs = np.unique(self._spec_index)
        out = np.empty(keys.shape) if len(specs) > 1 else None  # one spec: its times are the whole
        for spec in specs:
            spec = int(spec)
            if self._aggregates_ok.get(spec) is False:
                return None
            cols = np.flatnonzero(self._spec_index == spec)
            dev = self._spec_device[spec]
            pick = (slice(None), slice(None), cols) if len(cols) < keys.shape[2] else (Ellipsis,)
            times = self._aggregate_times(spec, dev, keys[pick])
            if times is not None and spec not in self._aggregates_ok:
                assert d.slot_tokens is not None, "slot counts are kept until the closed form is checked"
                rows = d.slot_tokens[pick].reshape(-1, d.slot_tokens.shape[3])
                # 256 rows spread over the chunk, its busiest device and its largest expert call
                sample = np.unique(np.r_[np.linspace(0, len(rows) - 1, 256).astype(np.int64),
                                         np.argmax(d.tokens[pick]), np.argmax(rows) // rows.shape[1]])
                ref = np.asarray(self.cost.expert_compute_batch_s([dev] * len(sample),
                                                                  np.sort(rows[sample], axis=1)), dtype=float)
                self._aggregates_ok[spec] = bool(np.array_equal(ref, times.reshape(-1)[sample]))
            if times is None or not self._aggregates_ok[spec]:
                self._aggregates_ok[spec] = False
                return None
            if out is None:
                return times
            out[pick] = times
        return out

    def _aggregate_times(self, spec: int, dev: str, keys: np.ndarray) -> np.ndarray | None:
        """Seconds of the calls given by packed aggregates ``keys`` (``padded << 31 | active << 21 |
        tokens``), looked up in :class:`moesim.sim.expert_memo.KeyedTimes`; None where the cost
        object declines."""
        memo = self._aggregated.get(spec)
        if memo is None:
            def price(new: np.ndarray) -> np.ndarray:
                times = self.cost.expert_aggregates_s(dev, new >> 31, (new >> 21) & 1023,
                                                      new & ((1 << 21) - 1))
                if times is None:
                    raise _Declined
                return times
            memo = self._aggregated[spec] = KeyedTimes(price)
        try:
            return memo(keys)
        except _Declined:
            return None

    def expert_times_keyed(self, keys: np.ndarray, slots: int) -> np.ndarray:
        """:meth:`expert_times` from each device's sorted slot counts packed ``62 // slots`` bits each
        (``keys`` [S, L, G]): looked up in a hash table of the priced keys
        (:class:`moesim.sim.expert_memo.KeyedTimes`), no sort or de-duplication of rows."""
        if not self.expert_calls:
            return np.zeros(keys.shape)
        out = np.empty(keys.shape)
        for spec in np.unique(self._spec_index):
            cols = np.flatnonzero(self._spec_index == spec)
            memo = self._keyed.get((int(spec), slots))
            if memo is None:
                memo = self._keyed[int(spec), slots] = KeyedTimes(self._pricer(int(spec), slots))
            out[:, :, cols] = memo(keys[:, :, cols] if len(cols) < keys.shape[2] else keys)
        return out

    def _pricer(self, spec: int, slots: int) -> Callable[[np.ndarray], np.ndarray]:
        """Seconds of ascending packed keys on a device of ``spec`` (the rows unpacked)."""
        bits = 62 // max(slots, 1)
        shifts = np.arange(slots, dtype=np.int64) * bits
        dev = self._spec_device[spec]

        def price(keys: np.ndarray) -> np.ndarray:
            rows = (keys[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
            return np.asarray(self._compute([dev] * len(rows), rows), dtype=float)
        return price

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
        out = dict(first=first, pair_copies=pairs, parts=parts,
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

    def node_timing(self) -> NodeTiming | None:
        """The all-to-all's link model for :mod:`moesim.sim.nodetimes` (compiled counting that times
        each (step, layer) as it counts), where it applies: node blocks, no micro-batches, numba."""
        from moesim.sim import nodetimes

        if (self.node_blocks is None or self.chunks > 1 or not nodetimes.available()
                or not hasattr(self.cost, "all_to_all_node_tables")):
            return None
        tables = self.cost.all_to_all_node_tables(self.devices, calls=0)
        if tables is None:
            return None
        a, t = self.a2a, self.timer
        combine = (nodetimes.COMBINE_SAME if self.mirrored else
                   nodetimes.COMBINE_SCALED if t.routes_mirrored else nodetimes.COMBINE_TRANSPOSED)
        tiles = self.tile_rows()
        keys = tiles is None or not self._aggregates_priced()
        return NodeTiming(*tables, dispatch_bytes=a.dispatch_bytes, combine_bytes=a.combine_bytes,
                          combine=combine, tile_rows=tiles, keys=keys)

    def aggregates_settled(self) -> bool:
        """Whether every expert call is now priced from the counting pass's aggregates alone (each
        spec's closed form checked once against its rows): then the per-slot counts are not needed."""
        return (self.expert_calls and self.groups is None and self.chunks == 1
                and set(self._aggregates_ok) == {int(x) for x in np.unique(self._spec_index)}
                and all(self._aggregates_ok.values()))

    def _aggregates_priced(self) -> bool:
        """Whether the cost object prices every spec's expert calls from aggregates (not the shards of
        expert TP: those are priced from their rows)."""
        if self.groups is not None:
            return False
        zero = np.zeros(1, dtype=np.int64)
        return all(self.cost.expert_aggregates_s(self._spec_device[int(spec)], zero, zero, zero) is not None
                   for spec in np.unique(self._spec_index))

    def _chunk_nodes(self, first: int, d: Dispatch, parts: PreParts) -> ChunkCosts:
        """:meth:`chunk` from node-level dispatch counts (the combine is the transposed matrix:
        its per-node rows are the dispatch's per-node columns, and the other way round)."""
        if d.link_s is not None:  # timed as counted (:meth:`node_timing`)
            assert d.sent is not None and d.received is not None
            link_d, link_c = d.link_s
            self.cost.all_to_all_node_tables(self.devices, calls=1 if link_c is None else 2)
            dispatch = self.timer.seconds(link_d, d.sent)
            out = dict(first=first, pair_copies=None, parts=parts, dispatch=dispatch,
                       combine=dispatch if link_c is None else self.timer.seconds(link_c, d.received))
            if self.groups is not None and self.expert_calls:
                self._expert_tp(d.slot_tokens, out)
                return ChunkCosts(**out)
            expert = self.expert_times_aggregated(d)
            if expert is None:
                expert = (self.expert_times(d.slot_tokens) if d.expert_keys is None
                          else self.expert_times_keyed(d.expert_keys, d.slot_tokens.shape[3]))
            return ChunkCosts(**out, expert=expert)
        assert d.node_rows is not None and d.node_cols is not None
        rows, cols, a = d.node_rows, d.node_cols, self.a2a  # token copies; bytes = copies * copy bytes
        out = dict(first=first, pair_copies=None, parts=parts,
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
