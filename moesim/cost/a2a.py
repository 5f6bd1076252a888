"""All-to-all modes: which copies of a token move, how many bytes each carries, fixed overheads.

Three modes (``moesim.vocab.AllToAll``), each a byte matrix on the flat topology routes of
:mod:`moesim.cost.collectives` plus software overheads:

- ``flat``: one copy per (token, expert) pair, from the token's GPU to the expert's GPU over the
  topology (today's model: no overheads; an ideal all-to-all).
- ``hierarchical`` (DeepEP's normal kernels): a token goes once to each destination *node*, to the
  GPU there with its own local index (its rail peer) over RDMA, which forwards it over NVLink once
  to each destination GPU of that node (its own node: the token's GPU forwards it). The byte matrix
  holds the RDMA copies ``(i -> rail peer)`` and the NVLink forwards ``(forwarder -> GPU)``.
- ``low-latency`` (DeepEP's low-latency kernels): one message per (token, expert) straight to the
  expert's GPU (RDMA across nodes, NVLink P2P inside one, DeepEP's default
  ``allow_nvlink_for_low_latency_mode=True``), each with a 16-byte header, into fixed buffers.

The combine is the dispatch reversed, in its own dtype. A call costs

    t = kernel_s + max over link directions (bytes / bandwidth) + path latency + message_s x copies

with ``copies`` the token copies sent by the busiest GPU. Sources: docs/cost.md "All-to-all modes".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moesim.specs.hardware import Cluster
from moesim.specs.model import DTYPE_BYTES, MoEModel
from moesim.vocab import AllToAll, Phase

FP8_SCALE_BLOCK = 128
"""Channels per fp32 scale of an fp8 token: DeepEP's ``per_token_cast_to_fp8`` (deepseek-ai/DeepEP
@dd758ca ``tests/legacy/test_internode.py``: ``fp8_factor = (1 + 4 / 128) / 2``)."""

LOW_LATENCY_HEADER_BYTES = 16
"""``sizeof(int4)`` of control per low-latency dispatch message (DeepEP @dd758ca
``csrc/kernels/legacy/internode_ll.cu``: ``num_bytes_per_msg = sizeof(int4) + ...``)."""

NORMAL_META_BYTES = 8
"""``SourceMeta`` (two ints) carried with each token by the normal kernels (DeepEP @dd758ca
``csrc/kernels/legacy/internode.cu`` ``get_num_bytes_per_token``), besides the top-k ids and weights."""


@dataclass(frozen=True)
class Overheads:
    """Fixed costs of one mode's dispatch or combine call (seconds) and their source."""

    kernel_s: float
    """Per call (launch, signalling, waiting for the slowest peer)."""
    message_s: float
    """Per token copy sent by the busiest GPU."""
    source: str


OVERHEADS: dict[AllToAll, Overheads] = {
    AllToAll.FLAT: Overheads(0.0, 0.0, "none: an ideal all-to-all (the link model alone)"),
    AllToAll.HIERARCHICAL: Overheads(
        0.0, 0.0,
        "none: against DeepEP's normal kernels (deepseek-ai/DeepEP @dd758ca docs/legacy.md) the link model "
        "alone is 6-28% fast and the gap grows with the bytes (the bf16 combine's is about twice the fp8 "
        "dispatch's), a bandwidth shortfall of the kernels rather than a fixed cost per call or copy"),
    AllToAll.LOW_LATENCY: Overheads(
        26e-6, 0.0,
        "fitted: mean gap between DeepEP's low-latency kernels (deepseek-ai/DeepEP @dd758ca docs/legacy.md) "
        "and the link model at EP16 and EP32, dispatch and combine, on h800x8; per copy 0: the busiest GPU "
        "sends 128 x 8 copies at every EP size there, so a cost per copy cannot be told from one per call"),
}
"""Defaults per mode (docs/cost.md "All-to-all modes" shows predicted vs published)."""


def payload_bytes(hidden: int, dtype: str) -> float:
    """Bytes of one token's hidden state in ``dtype`` as an all-to-all sends it: fp8 carries one
    fp32 scale per 128 channels."""
    if dtype == "fp8":
        return hidden + math.ceil(hidden / FP8_SCALE_BLOCK) * 4.0
    return hidden * DTYPE_BYTES[dtype]


def header_bytes(mode: AllToAll, direction: str, top_k: int) -> float:
    """Bytes each token copy carries besides its hidden state (DeepEP's message layouts, aligned
    to 16 bytes as the kernels align them); ``direction`` is ``dispatch`` or ``combine``."""
    if mode == AllToAll.LOW_LATENCY:
        return float(LOW_LATENCY_HEADER_BYTES) if direction == "dispatch" else 0.0
    if mode == AllToAll.HIERARCHICAL:
        # dispatch: meta + top-k ids (int) and weights (float); combine: meta + weights
        extra = NORMAL_META_BYTES + (8 if direction == "dispatch" else 4) * top_k
        return float(-(-extra // 16) * 16)
    return 0.0


@dataclass(frozen=True)
class AllToAllSpec:
    """One run's all-to-all: its mode, bytes per token copy each way, and overheads."""

    mode: AllToAll
    dispatch_bytes: float
    combine_bytes: float
    kernel_s: float = 0.0
    message_s: float = 0.0

    @classmethod
    def of(cls, mode: AllToAll | str, hidden: int, top_k: int, dispatch_dtype: str, combine_dtype: str,
           overheads: Overheads | None = None) -> AllToAllSpec:
        mode = AllToAll(mode)
        o = overheads or OVERHEADS[mode]
        return cls(mode, payload_bytes(hidden, dispatch_dtype) + header_bytes(mode, "dispatch", top_k),
                   payload_bytes(hidden, combine_dtype) + header_bytes(mode, "combine", top_k),
                   o.kernel_s, o.message_s)

    @classmethod
    def for_model(cls, model: MoEModel, mode: AllToAll | str) -> AllToAllSpec:
        """The spec of ``model``'s payload dtypes (``dispatch_dtype``, ``combine_dtype``)."""
        return cls.of(mode, model.hidden_size, model.top_k, model.dispatch_dtype, model.combine_dtype)

    @property
    def forwards(self) -> bool:
        """Whether copies go once per node and are forwarded inside it (the hierarchical mode)."""
        return self.mode == AllToAll.HIERARCHICAL

    def seconds(self, link_s: np.ndarray, copies: np.ndarray) -> np.ndarray:
        """Call times from the link model's times ``link_s`` and the busiest GPU's token copies."""
        return link_s + self.kernel_s + self.message_s * copies

    def bytes_per_token(self) -> float:
        """Dispatch + combine bytes of one token copy (what the planners' per-token model uses)."""
        return self.dispatch_bytes + self.combine_bytes


def default_mode(phase: Phase | str, num_nodes: int) -> AllToAll:
    """As the engines choose: one node -> ``flat``; several -> DeepEP's normal kernels for prefill
    and low-latency kernels for decode (SGLang ``--deepep-mode auto``)."""
    if num_nodes <= 1:
        return AllToAll.FLAT
    return AllToAll.HIERARCHICAL if Phase(phase) == Phase.PREFILL else AllToAll.LOW_LATENCY


def forwarding(cluster: Cluster, device_ids: tuple[str, ...] | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(node_of [G], peer [G, N])``: each device's node (0..N-1 in order of first appearance) and
    its rail peer on every node: the device there with its own local index among the listed devices
    of its node (modulo that node's count); on its own node, itself."""
    seen: dict[int, int] = {}
    node_of = np.array([seen.setdefault(cluster.device(d).node, len(seen)) for d in device_ids],
                       dtype=np.int64)
    n_nodes = len(seen)
    members = [np.flatnonzero(node_of == n) for n in range(n_nodes)]
    local = np.zeros(len(device_ids), dtype=np.int64)
    for m in members:
        local[m] = np.arange(len(m))
    peer = np.array([[members[n][local[i] % len(members[n])] for n in range(n_nodes)]
                     for i in range(len(device_ids))], dtype=np.int64).reshape(len(device_ids), n_nodes)
    return node_of, peer


def forwarded_matrix(gpu_copies: np.ndarray, node_copies: np.ndarray, node_of: np.ndarray,
                     peer: np.ndarray) -> np.ndarray:
    """The hierarchical byte (or copy) matrix [G, G] from ``gpu_copies[i, j]`` (what GPU i's tokens
    need at GPU j, once per token) and ``node_copies[i, n]`` (what they need on node n, once per
    token): RDMA ``i -> peer[i, n]`` for other nodes, NVLink forwards ``peer[i, node(j)] -> j``."""
    g = len(node_of)
    m = np.zeros((g, g))
    for i in range(g):
        for n in range(peer.shape[1]):
            if n != node_of[i]:
                m[i, peer[i, n]] += node_copies[i, n]
        for j in range(g):
            f = peer[i, node_of[j]]
            if f != j:
                m[f, j] += gpu_copies[i, j]
    return m


def uniform_dedup(num_experts: int, top_k: int, num_nodes: int) -> float:
    """Under uniform routing (``top_k`` distinct of ``num_experts``, equal shares per node): the
    hierarchical RDMA copies per cross-node (token, expert) pair, E[distinct other nodes] /
    E[experts on other nodes] (1 for one node)."""
    if num_nodes <= 1:
        return 1.0
    per_node = num_experts / num_nodes
    k = min(top_k, num_experts)
    miss = math.comb(round(num_experts - per_node), k) / math.comb(num_experts, k)
    return (1.0 - miss) / (k / num_nodes)


@dataclass(frozen=True)
class PlannerTerms:
    """The placement planners' per-token view of an all-to-all mode: bytes of one token copy there
    and back, fabric copies per cross-node (token, expert) pair, and whether a cross-node copy is
    then forwarded over NVLink (docs/planners.md)."""

    mode: AllToAll
    bytes_per_token: float
    fabric_copies: float
    forwarded: bool


def planner_terms(model: MoEModel, num_nodes: int, mode: AllToAll | str | None = None) -> PlannerTerms:
    """:class:`PlannerTerms` of ``mode`` (None or ``auto``: the default for throughput-sized steps,
    ``hierarchical`` across nodes, else ``flat``) under uniform routing."""
    mode = default_mode(Phase.PREFILL, num_nodes) if mode in (None, "auto") else AllToAll(mode)
    spec = AllToAllSpec.for_model(model, mode)
    dedup = uniform_dedup(model.num_experts, model.top_k, num_nodes) if spec.forwards else 1.0
    return PlannerTerms(mode, spec.bytes_per_token(), dedup, spec.forwards)
