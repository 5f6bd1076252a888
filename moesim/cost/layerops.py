"""The per-layer ops of a :class:`~moesim.cost.CostModel` other than experts and communication:
attention, router, permute/combine, shared experts, dense FFNs, LM head and embedding, each on one
device (``tp`` > 1: one device's shard of a tensor-parallel group), and the compute dtype rule."""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.cost import ops
from moesim.errors import UserError
from moesim.specs.hardware import Cluster
from moesim.specs.model import DTYPE_BYTES, MoEModel
from moesim.specs.precision import kernel_dtype


def _out(x: np.ndarray) -> Any:
    """A Python float for 0-d results, the array otherwise."""
    return float(x) if np.ndim(x) == 0 else x


class LayerOps:
    """Mixin of :class:`~moesim.cost.CostModel`: it provides ``model``, ``roofline``, ``_tables``,
    ``_note`` and ``_memoised``."""

    model: MoEModel

    def compute_dtype(self, device_id: str, op: str, weight_dtype: str) -> str:
        """The dtype ``op``'s GEMMs run at on ``device_id``: the spec's ``precision.compute`` for the op
        (checked against the GPUs' peaks when the cost model is built), else the weights' kernel type
        where the device has a peak for it (fp8 on Hopper), else the activation dtype."""
        pinned = self.model.compute_dtype_of(op)
        if pinned is not None:
            return kernel_dtype(pinned)
        return self.roofline(device_id).compute_dtype(weight_dtype, self.model.activation_dtype)

    def _roof_op(self, op: str, device_id: str, cnt: ops.OpCount, dtype: str) -> Any:
        roof = self.roofline(device_id)
        self._note(op, "roofline")
        return _out(roof.time_s(cnt.flops, cnt.nbytes, dtype, launches=cnt.launches))

    def _ffn_s(self, op: str, device_id: str, tokens: Any, width: int, count: int, weight_dtype: str,
               tp: int = 1) -> Any:
        """Dense FFNs (one device's 1/tp of the columns): two ``gemm`` table lookups (gate/up, down) +
        the activation's roofline when calibrated, else the roofline of the whole FFN."""
        roof = self.roofline(device_id)
        t = np.asarray(tokens, dtype=float)
        compute_op = "dense" if op == "dense_ffn" else "shared_experts"
        compute = self.compute_dtype(device_id, compute_op, weight_dtype)
        width = width // tp
        if self._tables.covers(device_id) and t.ndim == 0 and t > 0 and count == 1:
            gemms = self._tables.ffn_gemms_s(device_id, self.model, float(t), width, weight_dtype)
            if gemms is not None:
                act = roof.time_s(0.0, 3 * t * width * DTYPE_BYTES[self.model.activation_dtype], compute)
                self._note(op, "table")
                return gemms + float(act)
        cnt = ops.dense_ffn_counts(self.model, t, width, weight_dtype, count)
        return self._roof_op(op, device_id, cnt, compute)

    def attention_s(
        self,
        device_id: str,
        tokens: Any,
        context_tokens: Any,
        phase: str = "decode",
        *,
        layer: int | None = None,
        tp: int = 1,
    ) -> Any:
        """Attention of ``tokens`` query tokens (GQA or MLA), each attending ``context_tokens`` keys
        on average; decode reads the KV cache, prefill computes it. Sliding-window models (gpt-oss:
        every other layer from layer 0, window ``attention.sliding_window``) clip the context on
        sliding layers; with ``layer=None`` the result is the mean over a sliding and a full layer.
        ``tp``: one device of a tensor-parallel group (its heads, :func:`moesim.cost.ops.attention_shard`)."""

        def compute() -> Any:
            keys = ops.attended_keys(self.model, context_tokens, layer)
            cnt = ops.attention_counts(self.model, tokens, keys, phase, tp)
            dtype = self.compute_dtype(device_id, "attention", self.model.weight_dtype_of("attention"))
            return self._roof_op("attention", device_id, cnt, dtype)

        return self._memoised("attention", device_id, (tokens, context_tokens, phase, layer, tp), compute)

    def lm_head_s(self, device_id: str, tokens: Any, tp: int = 1) -> Any:
        """Final norm and logits GEMM for ``tokens`` output tokens (one device's V/tp columns)."""

        def compute() -> Any:
            cnt = ops.lm_head_counts(self.model, tokens, tp)
            dtype = self.compute_dtype(device_id, "lm_head", self.model.weight_dtype_of("embeddings"))
            return self._roof_op("lm_head", device_id, cnt, dtype)

        return self._memoised("lm_head", device_id, (tokens, tp), compute)

    def embedding_s(self, device_id: str, tokens: Any) -> Any:
        """Input embedding rows gathered for ``tokens`` tokens (memory-bound)."""

        def compute() -> Any:
            cnt = ops.embedding_counts(self.model, tokens)
            return self._roof_op("embedding", device_id, cnt, self.model.activation_dtype)

        return self._memoised("embedding", device_id, (tokens,), compute)

    def router_s(self, device_id: str, tokens: Any) -> Any:
        """Gate GEMM and top-k for ``tokens`` tokens (the ``gemm`` table's [tokens, H] x [H, E] when
        calibrated)."""
        return self._memoised("router", device_id, (tokens,), lambda: self._router_s(device_id, tokens))

    def _router_s(self, device_id: str, tokens: Any) -> Any:
        t = np.asarray(tokens, dtype=float)
        if self._tables.covers(device_id) and t.ndim == 0 and t > 0:
            m = self.model
            value = self._tables.gemm_s(device_id, float(t), m.num_experts, m.hidden_size, m.activation_dtype)
            if value is not None:
                self._note("router", "table")
                return value
        cnt = ops.router_counts(self.model, t)
        return self._roof_op("router", device_id, cnt, self.model.activation_dtype)

    def permute_combine_s(self, device_id: str, tokens: Any) -> Any:
        """Permute ``tokens`` tokens by expert before the expert GEMMs and combine after."""
        return self._memoised(
            "permute_combine", device_id, (tokens,), lambda: self._permute_combine_s(device_id, tokens)
        )

    def _permute_combine_s(self, device_id: str, tokens: Any) -> Any:
        t = np.asarray(tokens, dtype=float)
        if self._tables.covers(device_id) and t.ndim == 0 and t > 0:
            value = self._tables.permute_combine_s(device_id, self.model, float(t))
            if value is not None:
                self._note("permute_combine", "table")
                return value
        cnt = ops.permute_combine_counts(self.model, t)
        return self._roof_op("permute_combine", device_id, cnt, self.model.activation_dtype)

    def shared_expert_s(self, device_id: str, tokens: Any, tp: int = 1) -> Any:
        """The model's shared experts on ``tokens`` tokens (0 when it has none); ``tp``: one device's
        1/tp of their columns."""
        m = self.model
        if m.num_shared_experts == 0 or m.shared_expert_intermediate_size == 0:
            return _out(np.zeros_like(np.asarray(tokens, dtype=float)))
        return self._memoised(
            "shared_expert", device_id, (tokens, tp),
            lambda: self._ffn_s("shared_expert", device_id, tokens, m.shared_expert_intermediate_size,
                                m.num_shared_experts, m.weight_dtype_of("shared_experts"), tp))

    def dense_ffn_s(self, device_id: str, tokens: Any, tp: int = 1) -> Any:
        """The FFN of a non-MoE layer on ``tokens`` tokens (0 when every layer is MoE); ``tp``: one
        device's 1/tp of its columns."""
        m = self.model
        if m.dense_intermediate_size == 0:
            return _out(np.zeros_like(np.asarray(tokens, dtype=float)))
        return self._memoised(
            "dense_ffn", device_id, (tokens, tp),
            lambda: self._ffn_s("dense_ffn", device_id, tokens, m.dense_intermediate_size, 1,
                                m.weight_dtype_of("dense"), tp))


def check_compute_dtypes(cluster: Cluster, model: MoEModel) -> None:
    """A compute dtype pinned in the model's precision needs a native peak on every GPU (fp8 GEMMs on
    Hopper and newer); otherwise one UserError naming the op, the device and its peaks."""
    for op, value in model.precision.compute:
        if value == "auto":
            continue
        need = kernel_dtype(value)
        for d in cluster.gpus:
            peaks = d.spec.peak_flops_per_s
            if need not in peaks:
                raise UserError(f"{op} computes in {value}, but {d.id} ({d.spec.model}) has no {need} rate "
                                f"(its peaks: {', '.join(peaks)}); use compute {model.activation_dtype} or "
                                "auto on this cluster", field=f"precision.compute.{op}")

