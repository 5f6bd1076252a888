"""Dispatch of a step's routed tokens to expert replicas: tokens per device slot, all-to-all pairs.

Everything is vectorised over (step, token, layer, top-k) with ``np.bincount``; -1 ids (not
recorded) go to a dummy device column that is dropped, so no compaction pass is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from moesim.plans.plan import Plan
from moesim.sim.forwarding import Forwarding, forwarded_pairs, node_aggregates
from moesim.sim.linktimes import NodeTiming


@dataclass(frozen=True)
class ReplicaTable:
    """Where the replicas of each logical expert live, per MoE layer (from a Plan's placement)."""

    device: np.ndarray
    """[L, E + 1, R] device index of each replica (entry E is the dummy for -1 ids: device G)."""
    slot: np.ndarray
    """[L, E + 1, R] slot index of each replica on its device."""
    counts: np.ndarray
    """[L, E + 1] replicas per expert (the dummy has 1)."""
    num_devices: int
    slots_per_device: int

    @classmethod
    def of(cls, plan: Plan) -> ReplicaTable:
        L, G, S = plan.placement.shape
        E = plan.num_experts
        counts = np.ones((L, E + 1), dtype=np.int64)
        counts[:, :E] = plan.replica_counts()
        R = int(max(1, counts.max()))
        device = np.full((L, E + 1, R), G, dtype=np.int64)
        slot = np.zeros((L, E + 1, R), dtype=np.int64)
        # replicas in device order (replica 0 on the lowest device index): a stable sort of the
        # (layer, device, slot) entries by (layer, expert) ranks each copy among its expert's
        layer, g, s = np.nonzero(plan.placement >= 0)
        e = plan.placement[layer, g, s].astype(np.int64)
        key = layer * E + e
        order = np.argsort(key, kind="stable")
        first = np.searchsorted(key[order], key[order], side="left")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order)) - first
        device[layer, e, rank] = g
        slot[layer, e, rank] = s
        return cls(device=device, slot=slot, counts=counts, num_devices=G, slots_per_device=S)

    @property
    def has_replicas(self) -> bool:
        return bool(self.counts.max() > 1)

    @cached_property
    def single_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Without replicas: per (layer, 1 + expert) the flat bin of its slot in a step's
        ``[L, G + 1, J]`` slot counts and of its device in a step's ``[L, G, G + 1]`` pair counts
        (row 0 is the dummy of -1 ids, so an id indexes as ``id + 1``)."""
        L, E1, _ = self.device.shape
        G, J = self.num_devices, self.slots_per_device
        order = np.r_[E1 - 1, np.arange(E1 - 1)]  # dummy first
        dev = self.device[:, order, 0]
        layer = np.arange(L, dtype=np.int64)[:, None]
        slot_bin = layer * ((G + 1) * J) + dev * J + self.slot[:, order, 0]
        pair_bin = layer * (G * (G + 1)) + dev
        return slot_bin.ravel(), pair_bin.ravel()

    @cached_property
    def single_codes_g(self) -> np.ndarray:
        """:attr:`single_codes`' pair bins for a step's ``[L, G, G]`` pair counts (no dummy column:
        only valid when no id is -1)."""
        L, E1, _ = self.device.shape
        G = self.num_devices
        order = np.r_[E1 - 1, np.arange(E1 - 1)]
        return (np.arange(L, dtype=np.int64)[:, None] * (G * G) + self.device[:, order, 0]).ravel()


@dataclass(frozen=True)
class Dispatch:
    """Routing of a chunk of steps: ``slot_tokens[s, l, g, j]`` (token, expert) pairs computed in
    slot j of device g, ``pair_tokens[s, l, i, g]`` pairs sent from the token's device i to g.

    Node-level form (:class:`NodeCounting`): ``pair_tokens`` is None and the all-to-all is given by
    ``node_rows[s, l, i, n]`` pairs device i sends to node n's devices and ``node_cols[s, l, n, g]``
    pairs node n's devices send to g (a device's own pairs excluded), ``pair_total`` [G, G] the
    chunk's pairs summed over steps and layers, and ``pair_head`` [k, L, G, G] the full pairs of
    the chunk's first k steps (the timeline's)."""

    slot_tokens: np.ndarray | None
    """None only from the compiled pass when not asked to keep them (:attr:`NodeCounting.keep_slots`)."""
    pair_tokens: np.ndarray | None
    node_rows: np.ndarray | None = None
    node_cols: np.ndarray | None = None
    pair_total: np.ndarray | None = None
    pair_head: np.ndarray | None = None
    sent: np.ndarray | None = None
    """[S, L, G] copies each device sends to others, given instead of the node tables when they were
    counted and timed in one compiled pass (:mod:`moesim.sim.nodetimes`); ``received`` likewise."""
    received: np.ndarray | None = None
    link_s: tuple[np.ndarray, np.ndarray | None] | None = None
    """That pass's [S, L] link-model seconds of the dispatch and the combine (None: the dispatch's)."""
    expert_keys: np.ndarray | None = None
    """[S, L, G] each device's slot counts sorted and packed (:class:`moesim.sim.nodetimes.TimedCounts`)."""
    tokens: np.ndarray | None = None
    """[S, L, G] :attr:`device_tokens` when that pass counted them."""
    aggregate_keys: np.ndarray | None = None
    """That pass's [S, L, G] packed aggregates of each device's expert call
    (:attr:`moesim.sim.nodetimes.TimedCounts.aggregate_keys`)."""

    @property
    def device_tokens(self) -> np.ndarray:
        """[S, L, G] (token, expert) pairs computed per device."""
        if self.tokens is not None:
            return self.tokens
        assert self.slot_tokens is not None
        return self.slot_tokens.sum(axis=3)

    @property
    def num_steps(self) -> int:
        return len(self.device_tokens)


def radix_argsort(key: np.ndarray, key_max: int) -> np.ndarray:
    """Stable argsort of non-negative int keys <= ``key_max`` in O(n): least-significant-digit radix
    passes over 16-bit digits (numpy's stable argsort is a radix sort for 16-bit types, a merge
    sort for int64)."""
    order: np.ndarray | None = None
    shift = 0
    while True:
        digit = ((key >> shift) & 0xFFFF).astype(np.uint16)
        if order is None:
            order = np.argsort(digit, kind="stable")
        else:
            order = order[np.argsort(digit[order], kind="stable")]
        shift += 16
        if (int(key_max) >> shift) == 0:
            return order


def group_ranks(key: np.ndarray, key_max: int) -> np.ndarray:
    """Rank of each entry among the entries with the same key that come before it (flat order):
    a running counter per key, in O(n)."""
    key = key.ravel()
    order = radix_argsort(key, key_max)
    sorted_keys = key[order]
    start = np.empty(key.size, dtype=bool)
    start[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=start[1:])
    pos = np.arange(key.size, dtype=np.int64)
    rank = np.empty_like(pos)
    rank[order] = pos - np.maximum.accumulate(np.where(start, pos, 0))
    return rank


def owners(batch: int, num_devices: int) -> np.ndarray:
    """[batch] device of each token of a step: the batch cut into equal contiguous blocks (DP attention)."""
    return (np.arange(batch, dtype=np.int64) * num_devices) // max(batch, 1)


@dataclass(frozen=True)
class NodeCounting:
    """Count the all-to-all per (device, node) instead of per device pair: ``node_of`` [G] node of
    each device, ``head_steps`` how many first steps of a chunk also get their full pair counts."""

    node_of: np.ndarray
    head_steps: int = 0
    timing: NodeTiming | None = None
    """With it (and numba) the link-model seconds are computed in the counting pass and the node
    tables are not kept (:mod:`moesim.sim.nodetimes`)."""
    keep_slots: bool = True
    """False: that pass keeps no per-slot counts (``Dispatch.slot_tokens`` None), for callers that
    price expert calls from its aggregates only."""
    scratch: dict[str, np.ndarray] | None = field(default=None, compare=False)
    """Buffers that pass reuses from chunk to chunk (its per-(step, layer) outputs are overwritten
    by the next chunk's): for callers done with a chunk before they count the next."""

    @property
    def num_nodes(self) -> int:
        return int(self.node_of.max()) + 1 if self.node_of.size else 1


def dispatch(ids: np.ndarray, owner: np.ndarray, table: ReplicaTable,
             rng: np.random.Generator | None = None, nodes: NodeCounting | None = None,
             forward: Forwarding | None = None) -> Dispatch:
    """Route ``ids`` [S, B, L, K] (-1 = none) of tokens on devices ``owner`` [S, B].

    A replicated expert's pairs go round-robin over its replicas in token order (an even split);
    with ``rng`` each pair picks a replica uniformly at random instead. With ``forward`` the
    all-to-all counts are the hierarchical mode's copies (:mod:`moesim.sim.forwarding`), else one
    per (token, expert) pair.
    """
    S, _B, L, _K = ids.shape
    G, J = table.num_devices, table.slots_per_device
    E1 = table.counts.shape[1]
    if rng is None and not table.has_replicas and forward is not None and nodes is not None:
        from moesim.sim import counting

        if counting.available():
            return _node_dispatch(counting.count_forwarded_single(
                ids, table.device[:, :, 0], table.slot[:, :, 0], owner, forward.node_of, forward.peer, G, J,
                nodes.head_steps))
    if rng is None and not table.has_replicas and forward is None:
        if nodes is None:
            return _dispatch_single(ids, owner, table)
        from moesim.sim import counting, nodetimes

        if nodes.timing is not None and nodetimes.available():
            c = nodetimes.count_timed(ids, table.device[:, :, 0], table.slot[:, :, 0], owner, nodes.node_of,
                                      G, J, nodes.head_steps, nodes.timing, nodes.keep_slots,
                                      nodes.scratch)
            return Dispatch(slot_tokens=c.slot_tokens, pair_tokens=None, pair_total=c.total, pair_head=c.head,
                            sent=c.sent, received=c.received, link_s=c.link_s, expert_keys=c.expert_keys,
                            tokens=c.tokens, aggregate_keys=c.aggregate_keys)
        if counting.available():
            return _node_dispatch(counting.count_nodes_single(
                ids, table.device[:, :, 0], table.slot[:, :, 0], owner, nodes.node_of, G, J,
                nodes.head_steps))
    le = ids.astype(np.int64)
    np.putmask(le, le < 0, E1 - 1)  # -1 -> the dummy expert
    le += (np.arange(L, dtype=np.int64) * E1)[None, None, :, None]  # index into [L, E+1]
    R = table.device.shape[2]
    if not table.has_replicas:
        flat = le
    else:
        if rng is not None:
            rep = (rng.random(le.shape) * table.counts.ravel()[le]).astype(np.int64)
        else:
            # rank of each pair among the pairs of its (step, layer, expert), in token order
            key = (np.arange(S, dtype=np.int64) * (L * E1))[:, None, None, None] + le
            rank = group_ranks(key, S * L * E1 - 1)
            rep = rank.reshape(le.shape) % table.counts.ravel()[le]
        flat = le * R + rep
    dst = table.device.reshape(-1)[flat] if R > 1 else table.device[:, :, 0].ravel()[flat]
    dst_slot = dst * J + (table.slot.reshape(-1)[flat] if R > 1 else table.slot[:, :, 0].ravel()[flat])
    return count_routed(dst, dst_slot, owner, G, J, nodes, forward)


def count_routed(dst: np.ndarray, dst_slot: np.ndarray, owner: np.ndarray, G: int, J: int,
                 nodes: NodeCounting | None = None, forward: Forwarding | None = None) -> Dispatch:
    """Tokens per (step, layer, device, slot) and per (step, layer, source, destination) from the
    destination device (G = none) and device*J+slot of every routed entry ``[S, B, L, K]`` (with
    ``nodes``: per (source, node) and (node, destination) instead, see :class:`Dispatch`; with
    ``forward``: the hierarchical mode's copies instead of one per entry)."""
    if forward is not None:
        return _count_forwarded(dst, dst_slot, owner, G, J, nodes, forward)
    if nodes is not None:
        from moesim.sim import counting

        if counting.available():
            return _node_dispatch(counting.count_nodes(dst, dst_slot, owner, nodes.node_of, G, J,
                                                       nodes.head_steps))
        return _count_nodes(dst, dst_slot, owner, G, J, nodes)
    S, _B, L, _K = dst.shape
    sl = (np.arange(S, dtype=np.int64)[:, None] * L + np.arange(L, dtype=np.int64)[None, :])[:, None, :, None]
    dst_slot += sl * ((G + 1) * J)
    slot_tokens = np.bincount(dst_slot.ravel(), minlength=S * L * (G + 1) * J)
    slot_tokens = slot_tokens.reshape(S, L, G + 1, J)[:, :, :G]
    dst += (sl * G + owner[:, :, None, None]) * (G + 1)
    pair_tokens = np.bincount(dst.ravel(), minlength=S * L * G * (G + 1)).reshape(S, L, G, G + 1)[..., :G]
    return Dispatch(slot_tokens=slot_tokens, pair_tokens=pair_tokens)


def _dispatch_single(ids: np.ndarray, owner: np.ndarray, table: ReplicaTable) -> Dispatch:
    """:func:`dispatch` when every expert has one replica: two table look-ups and two
    ``bincount`` calls over the whole chunk, no per-layer loop."""
    S, B, L, K = ids.shape
    G, J = table.num_devices, table.slots_per_device
    E1 = table.counts.shape[1]
    slot_code, pair_code = table.single_codes
    # [S, L, B, K] order: the bins one (step, layer) touches are then adjacent in memory
    lt = np.ascontiguousarray(ids.transpose(0, 2, 1, 3))
    # index into the [L, 1 + E] code tables: id + 1 + layer * E1 (-1 ids hit the dummy row 0)
    le = np.add(lt, (np.arange(L, dtype=np.int32) * E1 + 1)[None, :, None, None], dtype=np.int32)
    step = np.arange(S, dtype=np.int64)
    slot_bins = np.take(slot_code, le)
    slot_bins += (step * (L * (G + 1) * J))[:, None, None, None]
    slot_tokens = np.bincount(slot_bins.ravel(), minlength=S * L * (G + 1) * J)
    slot_tokens = slot_tokens.reshape(S, L, G + 1, J)[:, :, :G]
    # Without -1 ids nothing goes to the dummy column G: count into [G, G] rows (contiguous).
    width = G + 1 if (ids < 0).any() else G
    pair_bins = np.take(pair_code if width == G + 1 else table.single_codes_g, le)
    pair_bins += (step[:, None] * (L * G * width) + owner * width)[:, None, :, None]
    pair = np.bincount(pair_bins.ravel(), minlength=S * L * G * width).reshape(S, L, G, width)[..., :G]
    del B, K
    return Dispatch(slot_tokens=slot_tokens, pair_tokens=pair)


def _count_nodes(dst: np.ndarray, dst_slot: np.ndarray, owner: np.ndarray, G: int, J: int,
                 nodes: NodeCounting) -> Dispatch:
    """:func:`count_routed` in node-level form: ``bincount`` calls over the routed entries into
    [S, L, G, N+1] + [S, L, N, G+1] + [S, L, G, 2] + [G, G+1] bins (no [S, L, G, G] array). No
    entry is masked out: "none" (G) has its own bin column, and the pairs a device sends itself
    are counted apart and subtracted."""
    S, B, L, K = dst.shape
    N = nodes.num_nodes
    sl = (np.arange(S, dtype=np.int64)[:, None] * L + np.arange(L, dtype=np.int64)[None, :])[:, None, :, None]
    slot_bins = dst_slot + sl * ((G + 1) * J)
    slot_tokens = np.bincount(slot_bins.ravel(), minlength=S * L * (G + 1) * J)
    slot_tokens = slot_tokens.reshape(S, L, G + 1, J)[:, :, :G]
    node_of = np.asarray(nodes.node_of, dtype=np.int64)
    node_ext = np.r_[node_of, N]  # "none" -> column N (dropped)
    src = sl * G + owner[:, :, None, None]  # (step, layer, source device) of each entry
    rows = np.bincount((src * (N + 1) + node_ext[dst]).ravel(), minlength=S * L * G * (N + 1))
    rows = rows.reshape(S, L, G, N + 1)[..., :N]
    src_node = (sl * N + node_of[owner][:, :, None, None]) * (G + 1)
    cols = np.bincount((src_node + dst).ravel(), minlength=S * L * N * (G + 1))
    cols = cols.reshape(S, L, N, G + 1)[..., :G]
    stay = dst == owner[:, :, None, None]
    own = np.bincount((src * 2 + stay).ravel(), minlength=S * L * G * 2).reshape(S, L, G, 2)[..., 1]
    g = np.arange(G)
    rows[:, :, g, node_of] -= own  # a device's own pairs cross no link
    cols[:, :, node_of, g] -= own
    total = np.bincount((owner[:, :, None, None] * (G + 1) + dst).ravel(), minlength=G * (G + 1))
    total = total.reshape(G, G + 1)[:, :G].copy()
    total[g, g] = 0
    head = None
    k = min(S, nodes.head_steps)
    if k:
        bins = (src[:k] * (G + 1) + dst[:k]).ravel()
        head = np.bincount(bins, minlength=k * L * G * (G + 1)).reshape(k, L, G, G + 1)[..., :G].copy()
        head[:, :, g, g] = 0
    del B, K
    return Dispatch(slot_tokens=slot_tokens, pair_tokens=None, node_rows=rows, node_cols=cols,
                    pair_total=total, pair_head=head)


def _node_dispatch(counts: tuple[np.ndarray, ...]) -> Dispatch:
    slot_tokens, rows, cols, total, head = counts
    return Dispatch(slot_tokens=slot_tokens, pair_tokens=None, node_rows=rows, node_cols=cols,
                    pair_total=total, pair_head=head if head.shape[0] else None)


def _count_forwarded(dst: np.ndarray, dst_slot: np.ndarray, owner: np.ndarray, G: int, J: int,
                     nodes: NodeCounting | None, fw: Forwarding) -> Dispatch:
    """:func:`count_routed` of the hierarchical mode: slots as always, the all-to-all as its copies
    (compiled in node-level form when numba is installed, else from the [S, L, G, G] pairs)."""
    from moesim.sim import counting

    S, _B, L, _K = dst.shape
    sl = (np.arange(S, dtype=np.int64)[:, None] * L + np.arange(L, dtype=np.int64)[None, :])[:, None, :, None]
    slot_tokens = np.bincount((dst_slot + sl * ((G + 1) * J)).ravel(), minlength=S * L * (G + 1) * J)
    slot_tokens = slot_tokens.reshape(S, L, G + 1, J)[:, :, :G]
    if nodes is not None and counting.available():
        rows, cols, total, head = counting.count_forwarded(dst, owner, fw.node_of, fw.peer, G,
                                                           nodes.head_steps)
        return Dispatch(slot_tokens=slot_tokens, pair_tokens=None, node_rows=rows, node_cols=cols,
                        pair_total=total, pair_head=head if head.shape[0] else None)
    pairs = forwarded_pairs(dst, owner, G, fw)
    if nodes is None:
        return Dispatch(slot_tokens=slot_tokens, pair_tokens=pairs)
    rows, cols = node_aggregates(pairs, fw.node_of, fw.num_nodes)
    k = min(S, nodes.head_steps)
    return Dispatch(slot_tokens=slot_tokens, pair_tokens=None, node_rows=rows, node_cols=cols,
                    pair_total=pairs.sum(axis=(0, 1)), pair_head=pairs[:k].copy() if k else None)
