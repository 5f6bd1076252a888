"""Predicted dispatch and combine of one expert-parallel all-to-all, for ``moesim bench a2a``.

The routing is drawn as DeepEP's own benchmarks draw it (deepseek-ai/DeepEP @dd758ca
``tests/legacy``): each token's top-k of random scores over ``num_experts`` experts placed
contiguously on the EP GPUs, optionally limited to the ``topk_groups`` best nodes
(``test_internode.py``'s group-limited routing); then the simulator's own dispatch counting and
all-to-all timing (:mod:`moesim.sim.dispatch`, :class:`moesim.sim.a2atimes.AllToAllTimer`) price
it, so a simulated step with the same routing takes the same time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from moesim.cost.a2a import AllToAllSpec, forwarding, payload_bytes
from moesim.errors import UserError
from moesim.sim.a2atimes import AllToAllTimer
from moesim.sim.dispatch import ReplicaTable, dispatch, owners
from moesim.sim.forwarding import Forwarding
from moesim.vocab import AllToAll

FABRIC_KINDS = ("ib-", "roce-")
"""Link kinds counted as the inter-node fabric (InfiniBand, RoCE)."""
ROUTING_CHUNK = 8192
"""Tokens whose scores are drawn at once."""


@dataclass(frozen=True)
class BenchSetup:
    """One all-to-all benchmark shape (DeepEP's test arguments)."""

    tokens_per_rank: int
    hidden: int
    top_k: int
    num_experts: int
    dispatch_dtype: str
    combine_dtype: str
    mode: AllToAll
    topk_groups: int | None = None
    """Route each token within its best ``topk_groups`` nodes (None: any expert)."""
    seed: int = 0


def routing(setup: BenchSetup, node_of_expert: np.ndarray, rng: np.random.Generator,
            tokens: int) -> np.ndarray:
    """[tokens, top_k] expert ids: top-k of |N(0,1)| + 1 scores, within the best ``topk_groups``
    nodes (a node's score is its best expert's) when set; drawn in chunks of tokens (bounded memory)."""
    out = np.empty((tokens, setup.top_k), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, node_of_expert[1:] != node_of_expert[:-1]])
    run_of_expert = np.cumsum(np.isin(np.arange(setup.num_experts), starts)) - 1  # runs: one node each
    for a in range(0, tokens, ROUTING_CHUNK):
        n = min(ROUTING_CHUNK, tokens - a)
        scores = np.abs(rng.standard_normal((n, setup.num_experts))) + 1.0
        if setup.topk_groups is not None:
            group = np.maximum.reduceat(scores, starts, axis=1)  # [n, runs of one node's experts]
            best = np.argpartition(-group, setup.topk_groups - 1, axis=1)[:, : setup.topk_groups]
            allowed = np.zeros(group.shape, dtype=bool)
            np.put_along_axis(allowed, best, True, axis=1)
            scores[~allowed[:, run_of_expert]] = -np.inf
        top = np.argpartition(-scores, setup.top_k - 1, axis=1)[:, : setup.top_k]  # unsorted, as DeepEP's
        out[a:a + n] = np.sort(top, axis=1)
    return out


def contiguous_table(num_experts: int, num_devices: int) -> ReplicaTable:
    """Expert e on device ``e // (E / G)`` (one replica; the dummy of -1 ids on device G)."""
    per = num_experts // num_devices
    e = np.arange(num_experts + 1)
    device = np.where(e < num_experts, e // per, num_devices)[None, :, None]
    slot = np.where(e < num_experts, e % per, 0)[None, :, None]
    return ReplicaTable(device=device.astype(np.int64), slot=slot.astype(np.int64),
                        counts=np.ones((1, num_experts + 1), dtype=np.int64), num_devices=num_devices,
                        slots_per_device=per)


def bench_routing(setup: BenchSetup, cost: Any, devices: tuple[str, ...]) -> np.ndarray:
    """[G * tokens_per_rank, top_k] the benchmark's expert ids (GPU g owns rows g*T .. g*T + T-1)."""
    G = len(devices)
    if setup.num_experts % G:
        raise UserError(f"expected a number of experts divisible by the EP size {G}, got {setup.num_experts}",
                        field="--experts")
    if not 1 <= setup.top_k <= setup.num_experts:
        raise UserError(f"expected a top-k from 1 to {setup.num_experts}, got {setup.top_k}", field="--top-k")
    node_of, _ = forwarding(cost.cluster, devices)
    if setup.topk_groups is not None and not 1 <= setup.topk_groups <= int(node_of.max()) + 1:
        raise UserError(f"expected top-k groups from 1 to the {int(node_of.max()) + 1} nodes, got "
                        f"{setup.topk_groups}", field="--topk-groups")
    node_of_expert = node_of[np.arange(setup.num_experts) // (setup.num_experts // G)]
    return routing(setup, node_of_expert, np.random.default_rng(setup.seed), G * setup.tokens_per_rank)


def bench_all_to_all(setup: BenchSetup, cost: Any, devices: tuple[str, ...]) -> dict[str, Any]:
    """Predicted dispatch and combine: seconds, bandwidths as DeepEP's tests define them (per GPU,
    GB/s), fabric bytes; see docs/cost.md "moesim bench a2a"."""
    G, T = len(devices), setup.tokens_per_rank
    if G < 2:
        raise UserError(f"expected an EP size of at least 2 GPUs, got {G}", field="--ep")
    ids = bench_routing(setup, cost, devices)
    spec = AllToAllSpec.of(setup.mode, setup.hidden, setup.top_k, setup.dispatch_dtype, setup.combine_dtype)
    fw = Forwarding(*cost.forwarding(devices)) if spec.forwards else None
    owner = owners(G * T, G)
    d = dispatch(ids[None, :, None, :].astype(np.int32), owner[None], contiguous_table(setup.num_experts, G),
                 forward=fw)
    pairs = d.pair_tokens
    assert pairs is not None
    diag = np.arange(G)
    pairs[:, :, diag, diag] = 0
    timer = AllToAllTimer(cost, devices, spec)
    times = {"dispatch": float(timer.pairs(pairs, spec.dispatch_bytes)[0, 0]),
             "combine": float(timer.pairs(pairs.transpose(0, 1, 3, 2), spec.combine_bytes)[0, 0])}
    node_of, _ = cost.forwarding(devices)
    gpu_of = np.arange(setup.num_experts) // (setup.num_experts // G)
    selections = ids.size / G  # (token, expert) copies per GPU, its own GPU's included
    token_gpus = _distinct_per_row(gpu_of[ids]) / G  # (token, GPU) copies per GPU
    token_nodes = _distinct_per_row(node_of[gpu_of[ids]]) / G  # (token, node) copies per GPU
    out: dict[str, Any] = {**asdict(setup), "mode": str(setup.mode), "ep": G, "nodes": int(node_of.max()) + 1,
                           "kernel_s": spec.kernel_s, "message_s": spec.message_s}
    kinds = {}
    for ln in cost.cluster.links:
        kinds[(ln.src, ln.dst)] = kinds[(ln.dst, ln.src)] = ln.spec.kind
    for name, copy_bytes, dtype, matrix in (
            ("dispatch", spec.dispatch_bytes, setup.dispatch_dtype, pairs[0, 0]),
            ("combine", spec.combine_bytes, setup.combine_dtype, pairs[0, 0].T)):
        t, payload = times[name], payload_bytes(setup.hidden, dtype)
        links = cost.link_bytes(devices, matrix * copy_bytes)
        out[name] = {
            "time_s": t,
            "copy_bytes": copy_bytes,
            "algorithm_gbps": selections * copy_bytes / t / 1e9,
            "rdma_gbps": token_nodes * payload / t / 1e9,
            "nvl_gbps": token_gpus * payload / t / 1e9,
            "fabric_bytes": float(sum(v for ln, v in links.items() if kinds[ln].startswith(FABRIC_KINDS))),
        }
    return out



def _distinct_per_row(values: np.ndarray) -> int:
    """Sum over rows of the number of distinct values in each row."""
    v = np.sort(values, axis=1)
    return int(v.shape[0] + (v[:, 1:] != v[:, :-1]).sum())
