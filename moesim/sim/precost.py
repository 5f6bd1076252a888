"""The work of each layer before its dispatch (and the whole of a dense layer), by part, for a chunk
of steps: attention, dense FFN / shared experts, router + permute, embedding / LM head, the
tensor-parallel collectives and the runtime's overheads (:data:`PRE_PARTS`).

Per GPU and step (:mod:`moesim.parallel`): attention on its TP group's tokens with 1/tp of the heads,
then a ring all-reduce of its output over the group; a dense layer's FFN, or an MoE layer's shared
experts, likewise (1/tp of the columns, then an all-reduce); router and permute on the GPU's own
tokens. Layer 0 adds the embedding (and with TP its all-reduce) and the runtime's per-step
overhead; the last layer the LM head of the step's output tokens (decode: every token; prefill: one
per prompt; with TP an all-gather of the logits); every layer the per-layer overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from moesim.parallel import Parallelism, device_token_counts
from moesim.sim.expert_memo import KeyedTimes, compiled
from moesim.specs.model import DTYPE_BYTES
from moesim.specs.runtime import Runtime

PRE_PARTS = ("attention", "dense", "router", "lm_head", "communication", "overhead")
"""Parts of the pre-dispatch work: ``dense`` = dense FFN or shared experts, ``router`` = router +
permute/combine, ``lm_head`` = embedding (layer 0) and LM head (last layer), ``communication`` = the
tensor-parallel collectives, ``overhead`` = the runtime's step and layer overheads."""
COMPUTE_PARTS = ("attention", "dense", "router", "lm_head")
_IDX = {p: i for i, p in enumerate(PRE_PARTS)}
__all__ = ["PRE_PARTS", "PreCoster", "PreParts", "device_token_counts"]


@dataclass(frozen=True)
class PreParts:
    """Seconds of each part per (layer kind, step, GPU): ``kinds`` [K, S, G, P], ``layer_kind`` [L]
    the kind of every model layer, ``edge_bytes`` [K, S, groups] the bytes each ring edge of a TP
    group carries in that layer's collectives."""

    kinds: np.ndarray
    layer_kind: np.ndarray
    edge_bytes: np.ndarray

    def total(self) -> np.ndarray:
        """[S, L, G] the whole pre-dispatch time."""
        return self.kind_total()[self.layer_kind].transpose(1, 0, 2)

    def busy(self) -> np.ndarray:
        """[S, L, G] compute only (no collectives, no framework overhead)."""
        return self.kind_busy()[self.layer_kind].transpose(1, 0, 2)

    def kind_total(self) -> np.ndarray:
        """[K, S, G] :meth:`total` per layer kind (summed once)."""
        return self._kind_total

    @cached_property
    def _kind_total(self) -> np.ndarray:
        return self.kinds.sum(axis=3)

    def kind_busy(self) -> np.ndarray:
        """[K, S, G] :meth:`busy` per layer kind."""
        return self.kinds[..., [_IDX[p] for p in COMPUTE_PARTS]].sum(axis=3)

    def critical(self) -> np.ndarray:
        """[S, L, P] the parts of the GPU whose pre-dispatch work is the longest, per (step, layer)."""
        tot = self.kind_total()
        g = np.argmax(tot, axis=2)  # [K, S]
        k, s = np.meshgrid(np.arange(tot.shape[0]), np.arange(tot.shape[1]), indexing="ij")
        per_kind = self.kinds[k, s, g]  # [K, S, P]
        return per_kind[self.layer_kind].transpose(1, 0, 2)

    def with_attention(self, attention: np.ndarray) -> PreParts:
        """The same parts with the attention of every layer replaced by ``attention`` [S, G] seconds."""
        kinds = self.kinds.copy()
        kinds[..., _IDX["attention"]] = attention[None]
        return PreParts(kinds, self.layer_kind, self.edge_bytes)

    def step(self, i: int) -> np.ndarray:
        """[L, G, P] the parts of step ``i`` of the chunk."""
        return self.kinds[:, i][self.layer_kind]

    def step_edge_bytes(self, i: int) -> np.ndarray:
        """[L, groups] bytes per ring edge in step ``i``'s collectives."""
        return self.edge_bytes[:, i][self.layer_kind]


class PreCoster:
    """Prices the pre-dispatch parts of a chunk of steps with a few batched cost calls."""

    def __init__(self, cost: Any, devices: tuple[str, ...], *, phase: str,
                 parallel: Parallelism | None = None, runtime: Runtime | None = None,
                 compiled_lookups: bool = False):
        """``compiled_lookups``: look the ops' seconds up in a compiled hash table (numba) rather than
        de-duplicating each chunk's keys by a sort (the same seconds)."""
        self.cost, self.model, self.devices, self.phase = cost, cost.model, devices, phase
        self.parallel = parallel or Parallelism(tp=1, dp=len(devices), ep=len(devices))
        self.runtime = runtime or Runtime()
        m = self.model
        is_moe = np.zeros(m.num_layers, dtype=bool)
        is_moe[np.asarray(m.moe_layers, dtype=np.int64)] = True
        layers = [(bool(is_moe[i]), i == 0, i == m.num_layers - 1) for i in range(m.num_layers)]
        self.kind_keys = sorted(set(layers))
        self.layer_kind = np.array([self.kind_keys.index(k) for k in layers], dtype=np.int64)
        specs: dict[int, int] = {}
        self._spec_index = np.array(
            [specs.setdefault(id(cost.cluster.device(d).spec), len(specs)) for d in devices], dtype=np.int64)
        self._spec_device = {i: devices[int(np.argmax(self._spec_index == i))] for i in range(len(specs))}
        self.groups = self.parallel.groups(devices)
        self._memo: dict[tuple[str, int, int, int], float] = {}
        """(op, spec, tokens, context) -> seconds, across chunks."""
        self.compiled_lookups = compiled_lookups and compiled()
        self._keyed: dict[str, KeyedTimes] = {}
        """op -> the same seconds by packed key, looked up in one compiled pass (numba)."""
        self.act = DTYPE_BYTES[m.activation_dtype]

    def _per_device(self, op: str, tokens: np.ndarray, context: np.ndarray) -> np.ndarray:
        """[S, G] seconds of ``op``: one cost call per distinct (device spec, tokens, context),
        scattered back (devices of one spec in lockstep cost the same)."""
        S, G = tokens.shape
        if op != "attention":  # only attention reads the context: one key per token count, not per step
            context = np.zeros_like(context)
        spec = np.broadcast_to(self._spec_index[None, :], (S, G))
        ctx = np.broadcast_to(context[:, None], (S, G))
        if self.compiled_lookups and tokens.dtype.kind in "iu" and context.dtype.kind in "iu" and S * G:
            t_lo, t_hi = int(tokens.min()), int(tokens.max())
            c_lo, c_hi = int(context.min()), int(context.max())
            if t_lo >= 0 and c_lo >= 0 and t_hi < 1 << 28 and c_hi < 1 << 27 and len(self._spec_device) < 256:
                keyed = self._keyed.get(op)
                if keyed is None:
                    keyed = self._keyed[op] = KeyedTimes(lambda new, op=op: self._price_packed(op, new))
                return keyed((spec.astype(np.int64) << 55) | (tokens.astype(np.int64) << 27)
                             | ctx.astype(np.int64))
        top_t, top_c = int(tokens.max(initial=0)), int(ctx.max(initial=0))
        bits_t, bits_c = top_t.bit_length(), top_c.bit_length()
        small = (int(tokens.min(initial=0)) >= 0 and int(ctx.min(initial=0)) >= 0
                 and len(self._spec_device).bit_length() + bits_t + bits_c <= 62)
        if not small:
            keys = np.stack([spec, tokens, ctx], axis=-1).reshape(-1, 3)
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        else:  # one int64 per (spec, tokens, context): a 1-D unique, same distinct keys and order
            packed = ((spec.astype(np.int64) << (bits_t + bits_c)) | (tokens.astype(np.int64) << bits_c)
                      | ctx.astype(np.int64)).ravel()
            ukeys, inverse = np.unique(packed, return_inverse=True)
            uniq = np.stack([ukeys >> (bits_t + bits_c), (ukeys >> bits_c) & ((1 << bits_t) - 1),
                             ukeys & ((1 << bits_c) - 1)], axis=-1)
        memo = self._memo
        values = np.empty(len(uniq))
        for i, (spec_i, n, ctx_i) in enumerate(uniq.tolist()):  # each priced once per run
            key = (op, spec_i, n, ctx_i)
            v = memo.get(key)
            if v is None:
                v = memo[key] = self._op(op, self._spec_device[spec_i], n, ctx_i)
            values[i] = v
        return values[inverse.ravel()].reshape(S, G)

    def _price_packed(self, op: str, keys: np.ndarray) -> np.ndarray:
        """Seconds of ``op`` for keys ``spec << 55 | tokens << 27 | context`` (:meth:`_per_device`),
        through the same (op, spec, tokens, context) memo as the unpacked path."""
        memo, out = self._memo, np.empty(len(keys))
        for i, k in enumerate(keys.tolist()):
            spec_i, n, ctx_i = k >> 55, (k >> 27) & ((1 << 28) - 1), k & ((1 << 27) - 1)
            v = memo.get((op, spec_i, n, ctx_i))
            if v is None:
                v = memo[op, spec_i, n, ctx_i] = self._op(op, self._spec_device[spec_i], n, ctx_i)
            out[i] = v
        return out

    def _op(self, op: str, dev: str, tokens: int, context: int) -> float:
        if tokens == 0:
            return 0.0
        c, tp = self.cost, self.parallel.tp
        kw = {"tp": tp} if tp > 1 else {}  # cost objects of tests may not take tp
        if op == "attention":
            return float(c.attention_s(dev, tokens, context, self.phase, **kw))
        if op == "router":
            return float(c.router_s(dev, tokens) + c.permute_combine_s(dev, tokens))
        if op == "shared":
            return float(c.shared_expert_s(dev, tokens, **kw))
        if op == "dense":
            return float(c.dense_ffn_s(dev, tokens, **kw))
        if op == "embedding":
            return float(c.embedding_s(dev, tokens)) if hasattr(c, "embedding_s") else 0.0
        return float(c.lm_head_s(dev, tokens, **kw)) if hasattr(c, "lm_head_s") else 0.0

    def _collective(self, nbytes: np.ndarray, kind: str = "all_reduce") -> np.ndarray:
        """[S, G] seconds of one collective per TP group with ``nbytes`` [S, groups] (the whole buffer)."""
        tp = self.parallel.tp
        if tp == 1:
            return np.zeros((nbytes.shape[0], len(self.devices)))
        out = np.zeros((nbytes.shape[0], len(self.groups)))
        for j, group in enumerate(self.groups):
            col = nbytes[:, j]
            uniq, inverse = np.unique(col, return_inverse=True)
            times = np.asarray(self.cost.all_reduce_s(group, uniq, kind), dtype=float)
            out[:, j] = np.broadcast_to(times, uniq.shape)[inverse.ravel()]
        return np.repeat(out, tp, axis=1)

    def parts(self, batch: np.ndarray, context: np.ndarray, outputs: np.ndarray | None = None) -> PreParts:
        """The parts of a chunk: ``batch`` [S] tokens, ``context`` [S] keys per token, ``outputs`` [S]
        tokens the LM head scores (default: every token, as in decode)."""
        G = len(self.devices)
        return self.parts_owned(device_token_counts(batch, G), context,
                                device_token_counts(batch if outputs is None else outputs, G))

    def parts_owned(self, owned: np.ndarray, context: np.ndarray, outputs: np.ndarray,
                    attention: np.ndarray | None = None) -> PreParts:
        """:meth:`parts` for ``owned`` [S, G] tokens each GPU owns and ``outputs`` [S, G] tokens each GPU's
        LM head scores; ``attention`` [S, G] seconds, when given, replace the attention priced at
        ``context`` (a serving step prices each GPU's requests at their own contexts)."""
        from moesim.cost.allreduce import bus_factor

        G, tp, m = len(self.devices), self.parallel.tp, self.model
        group = self.parallel.group_tokens(owned)
        outs = self.parallel.group_tokens(outputs)
        group_sums = group[:, ::tp].astype(float)  # [S, groups]
        hidden = group_sums * m.hidden_size * self.act
        ar = self._collective(hidden)
        ar_factor = bus_factor("all_reduce", tp) if tp > 1 else 0.0
        if attention is None:
            attention = self._per_device("attention", group, context)
        need = {k for key in self.kind_keys for k in (("router", "shared") if key[0] else ("dense",))}
        computed = {op: self._per_device(op, owned if op == "router" else group, context) for op in need}
        S = owned.shape[0]
        kinds = np.zeros((len(self.kind_keys), S, G, len(PRE_PARTS)))
        edges = np.zeros((len(self.kind_keys), S, len(self.groups)))
        rt = self.runtime
        for k, (moe, first, last) in enumerate(self.kind_keys):
            p = kinds[k]
            p[..., _IDX["attention"]] = attention
            p[..., _IDX["overhead"]] = rt.layer_overhead_s + (rt.step_overhead_s if first else 0.0)
            collectives, edge = ar.copy(), ar_factor * hidden
            if moe:
                p[..., _IDX["router"]] = computed["router"]
                if m.num_shared_experts:
                    p[..., _IDX["dense"]] = computed["shared"]
                    collectives, edge = collectives + ar, edge + ar_factor * hidden
            else:
                p[..., _IDX["dense"]] = computed["dense"]
                collectives, edge = collectives + ar, edge + ar_factor * hidden
            if first:
                p[..., _IDX["lm_head"]] += self._per_device("embedding", owned, context)
                collectives, edge = collectives + ar, edge + ar_factor * hidden
            if last:
                p[..., _IDX["lm_head"]] += self._per_device("lm_head", outs, context)
                logits = outs[:, ::tp].astype(float) * m.vocab_size * self.act
                collectives = collectives + self._collective(logits, "all_gather")
                edge = edge + (bus_factor("all_gather", tp) if tp > 1 else 0.0) * logits
            p[..., _IDX["communication"]] = collectives
            edges[k] = edge
        return PreParts(kinds, self.layer_kind, edges)
