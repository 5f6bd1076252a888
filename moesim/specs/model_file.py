"""Model specs (YAML) -> :class:`~moesim.specs.model.MoEModel`, plus derived sizes for ``model show``.

Built-in specs live in ``moesim/specs/models/<name>.yaml`` with the numbers of each model's
config.json; users write their own in the same format (docs/models.md). ``extends:`` reuses one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.limits import EXPERTS, LAYERS, TOP_K
from moesim.resources import builtin_dir, builtin_names
from moesim.specs.hf_config import is_hf_config, spec_from_hf_config
from moesim.specs.model import DTYPE_BYTES, AttentionSpec, MoEModel
from moesim.specs.precision import AUTO, COMPUTE_OPS, WEIGHT_TENSORS, Precision
from moesim.specs.sizes import tensor_sizes
from moesim.specs.yaml_fields import Fields, load_document, origin_of

_TOP_KEYS = frozenset(
    {
        "name",
        "description",
        "hf_id",
        "source",
        "verified",
        "notes",
        "extends",
        "num_layers",
        "moe_layers",
        "hidden_size",
        "expert_intermediate_size",
        "num_experts",
        "top_k",
        "num_shared_experts",
        "shared_expert_intermediate_size",
        "dense_intermediate_size",
        "gated",
        "vocab_size",
        "weight_dtype",
        "activation_dtype",
        "dispatch_dtype",
        "combine_dtype",
        "precision",
        "num_expert_groups",
        "topk_groups",
        "attention",
        "routing",
        "max_position_embeddings",
        "num_mtp_layers",
    }
)
_REQUIRED = (
    "source",
    "num_layers",
    "moe_layers",
    "hidden_size",
    "expert_intermediate_size",
    "num_experts",
    "top_k",
    "attention",
)
_ATTN_KEYS = frozenset(
    {
        "kind",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "q_lora_rank",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "sliding_window",
        "sliding_window_layers",
        "bias",
    }
)
_MOE_LAYER_KEYS = frozenset({"first_dense", "every", "offset"})
_ROUTING_KEYS = frozenset({"scoring", "norm_topk_prob", "routed_scaling_factor", "expert_capacity"})
_PRECISION_KEYS = frozenset({"attention", "dense", "shared_experts", "routed_experts", "embeddings",
                             "kv_cache", "dispatch", "combine", "compute"})
DTYPES = tuple(DTYPE_BYTES)


def load_model(name_or_path: str | Path) -> MoEModel:
    """Load a model spec by built-in name (``deepseek-v3``) or path."""
    doc = load_document("model", name_or_path)
    if is_hf_config(doc.data):  # a transformers config.json, read as the equivalent spec
        data = spec_from_hf_config(doc.data, file=str(doc.path))
        name = doc.path.parent.name if doc.path.stem == "config" else doc.path.stem
        return parse_model(Fields(data, "", {"": str(doc.path)}, str(doc.path)), name)
    f = doc.fields
    own_name = "name" in f and origin_of(doc.origins, "name", str(doc.path)) == str(doc.path)
    return parse_model(f, f.str("name") if own_name else doc.path.stem)


def parse_model(f: Fields, name: str) -> MoEModel:
    f.check_keys(_TOP_KEYS, required=_REQUIRED)
    num_layers = f.int("num_layers", minimum=1, maximum=LAYERS)
    moe_layers = _moe_layers(f, num_layers)
    num_experts = f.int("num_experts", minimum=1, maximum=EXPERTS)
    top_k = f.int("top_k", minimum=1, maximum=TOP_K)
    if top_k > num_experts:
        raise f.error("top_k", f"expected at most num_experts ({num_experts}) experts per token, got {top_k}")
    shared = f.int("num_shared_experts", 0)
    shared_width = f.int("shared_expert_intermediate_size", 0)
    if shared and not shared_width:
        raise f.error(
            "shared_expert_intermediate_size",
            f"expected the width of each of the {shared} shared expert(s), got none",
        )
    if shared_width and not shared:
        raise f.error("num_shared_experts", "expected at least 1 when shared_expert_intermediate_size is set")
    dense_width = f.int("dense_intermediate_size", 0)
    if len(moe_layers) < num_layers and not dense_width:
        raise f.error(
            "dense_intermediate_size",
            f"expected the FFN width of the {num_layers - len(moe_layers)} dense layer(s), got none",
        )
    groups = f.int("num_expert_groups", 1, minimum=1)
    topk_groups = f.int("topk_groups", 1, minimum=1)
    if num_experts % groups:
        raise f.error("num_expert_groups", f"expected a divisor of num_experts ({num_experts}), got {groups}")
    if topk_groups > groups:
        raise f.error("topk_groups", f"expected at most num_expert_groups ({groups}), got {topk_groups}")
    if "routing" in f:
        f.mapping("routing").check_keys(_ROUTING_KEYS)
    f.str("source")
    activation = f.str("activation_dtype", "bf16", choices=DTYPES)
    tensors = _precision(f, activation)
    return MoEModel(
        name=name,
        num_layers=num_layers,
        moe_layers=moe_layers,
        hidden_size=f.int("hidden_size", minimum=1),
        expert_intermediate_size=f.int("expert_intermediate_size", minimum=1),
        num_experts=num_experts,
        top_k=top_k,
        attention=_attention(f.mapping("attention"), f.int("hidden_size", minimum=1)),
        num_shared_experts=shared,
        shared_expert_intermediate_size=shared_width,
        dense_intermediate_size=dense_width,
        gated=f.bool("gated", True),
        vocab_size=f.int("vocab_size", 0),
        weight_dtype=tensors.pop("routed_experts"),
        activation_dtype=activation,
        dispatch_dtype=tensors.pop("dispatch"),
        combine_dtype=tensors.pop("combine"),
        num_expert_groups=groups,
        topk_groups=topk_groups,
        source=f.str("source"),
        precision=tensors.pop("precision"),
    )


def _precision(f: Fields, activation: str) -> dict:
    """Routed-expert, dispatch and combine dtypes and the :class:`Precision` of the other tensors,
    from the ``precision:`` block and the top-level ``weight_dtype``/``dispatch_dtype``/``combine_dtype``
    (the block and a top-level field may both name a tensor only if they agree)."""
    p = f.mapping("precision") if "precision" in f else None
    if p is not None:
        p.check_keys(_PRECISION_KEYS)
    out: dict = {}
    pairs = (("routed_experts", "weight_dtype", "bf16"), ("dispatch", "dispatch_dtype", activation),
             ("combine", "combine_dtype", activation))
    for key, top, default in pairs:
        value = f.str(top, default, choices=DTYPES)
        if p is not None and key in p:
            inner = p.str(key, choices=DTYPES)
            # a top-level field of the same file must agree; one inherited through extends is overridden
            if top in f and inner != value and f.file(top) == p.file(key):
                raise p.error(key, f"expected the same dtype as {top} ({value}), got {inner}")
            value = inner
        out[key] = value
    if p is None:
        out["precision"] = Precision()
        return out
    compute: dict[str, str] = {}
    if "compute" in p:
        if isinstance(p.raw("compute"), dict):
            c = p.mapping("compute")
            c.check_keys(frozenset(COMPUTE_OPS))
            compute = {op: c.str(op, choices=(AUTO, *DTYPES)) for op in COMPUTE_OPS if op in c}
        else:
            compute = dict.fromkeys(COMPUTE_OPS, p.str("compute", choices=(AUTO, *DTYPES)))
    names = ("attention", "dense", "shared_experts", "embeddings", "kv_cache")
    out["precision"] = Precision(**{k: p.str(k, choices=DTYPES) for k in names if k in p}, compute=compute)
    return out


def _moe_layers(f: Fields, num_layers: int) -> tuple[int, ...]:
    """``all``, an explicit list, ``{first_dense: K}`` or ``{every: N, offset: M}``."""
    value = f.raw("moe_layers")
    expected = "expected 'all', a list of layer indices, {first_dense: K} or {every: N, offset: M}"
    if value == "all":
        return tuple(range(num_layers))
    if isinstance(value, list):
        layers = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_layers:
                raise UserError(
                    f"expected a layer index from 0 to {num_layers - 1}, got {v!r}",
                    file=f.file("moe_layers"),
                    field=f"{f.field('moe_layers')}[{i}]",
                )
            layers.append(v)
        if not layers or sorted(set(layers)) != layers:
            raise f.error("moe_layers", "expected at least one layer index, increasing, without repeats")
        return tuple(layers)
    if isinstance(value, dict):
        m = f.mapping("moe_layers")
        m.check_keys(_MOE_LAYER_KEYS)
        if "first_dense" in m:
            if "every" in m or "offset" in m:
                raise m.error("first_dense", "expected first_dense alone, or every/offset, not both")
            k = m.int("first_dense", minimum=0)
            if k >= num_layers:
                raise m.error(
                    "first_dense", f"expected fewer dense layers than num_layers ({num_layers}), got {k}"
                )
            return tuple(range(k, num_layers))
        every = m.int("every", minimum=1)
        offset = m.int("offset", 0)
        if offset >= every:
            raise m.error("offset", f"expected an offset below every ({every}), got {offset}")
        return tuple(i for i in range(num_layers) if i % every == offset)
    raise f.error("moe_layers", f"{expected}, got {value!r}")


def _attention(a: Fields, hidden: int) -> AttentionSpec:
    a.check_keys(_ATTN_KEYS, required=("kind", "num_heads"))
    kind = a.str("kind", choices=("gqa", "mla"))
    heads = a.int("num_heads", minimum=1)
    kv_heads = a.int("num_kv_heads", heads, minimum=1)
    if heads % kv_heads:
        raise a.error("num_kv_heads", f"expected a divisor of num_heads ({heads}), got {kv_heads}")
    window = a.optional_int("sliding_window", minimum=1)
    if "sliding_window_layers" in a and window is None:
        raise a.error("sliding_window", "expected a window size when sliding_window_layers is set")
    if kind == "mla":
        for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if a.data.get(key) is None:
                raise a.error(
                    key, "missing required field (MLA attention needs the latent ranks and head dims)"
                )
        nope, rope = a.int("qk_nope_head_dim", minimum=1), a.int("qk_rope_head_dim", minimum=1)
        return AttentionSpec(
            kind="mla",
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=a.int("head_dim", nope + rope, minimum=1),
            q_lora_rank=a.optional_int("q_lora_rank", minimum=1),
            kv_lora_rank=a.int("kv_lora_rank", minimum=1),
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope,
            v_head_dim=a.int("v_head_dim", minimum=1),
            sliding_window=window,
        )
    for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        if a.data.get(key) is not None:
            raise a.error(key, "expected only with kind: mla")
    if "head_dim" not in a and hidden % heads:
        raise a.error(
            "head_dim", f"expected head_dim (hidden_size {hidden} is not a multiple of {heads} heads)"
        )
    return AttentionSpec(
        kind="gqa",
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=a.int("head_dim", hidden // heads, minimum=1),
        sliding_window=window,
    )


# ---- derived numbers (helpers beside MoEModel, which the lead owns) -----------------------------------

def model_params(model: MoEModel) -> dict[str, int]:
    """Parameter counts: routed experts, shared experts, dense FFNs, attention, router, embeddings."""
    t = tensor_sizes(model)
    counts = {
        "routed_experts": t["routed_experts"].params,
        "shared_experts": t["shared_experts"].params,
        "dense_ffn": t["dense"].params,
        "attention": t["attention"].params,
        "router": t["router"].params,
        "embeddings": t["embedding"].params + t["lm_head"].params,  # input embedding + untied lm_head
    }
    counts["total"] = sum(counts.values())
    counts["active_per_token"] = (
        counts["total"] - counts["routed_experts"] + model.expert_params * model.top_k * model.num_moe_layers
    )
    return counts


def precision_summary(model: MoEModel) -> dict[str, Any]:
    """The dtype every tensor is served in, resolved (``auto`` where the compute dtype is not pinned)."""
    return {
        **{t: model.weight_dtype_of(t) for t in WEIGHT_TENSORS},
        "kv_cache": model.kv_cache_dtype,
        "dispatch": model.dispatch_dtype,
        "combine": model.combine_dtype,
        "compute": {op: model.precision.compute_of(op) for op in COMPUTE_OPS},
    }


def tensor_summary(model: MoEModel) -> dict[str, dict[str, Any]]:
    """Per weight tensor: dtype, parameters and bytes per layer, layers, total bytes; plus the KV cache
    per token and layer (what ``model show`` prints as bytes per layer)."""
    out: dict[str, dict[str, Any]] = {
        name: {"dtype": t.dtype, "params_per_layer": t.params_per_layer, "bytes_per_layer": t.bytes_per_layer,
               "layers": t.layers, "total_bytes": t.total_bytes}
        for name, t in tensor_sizes(model).items()
    }
    kv = model.kv_cache_bytes_per_token() / model.num_layers
    out["kv_cache"] = {"dtype": model.kv_cache_dtype, "bytes_per_token_per_layer": kv,
                       "layers": model.num_layers, "bytes_per_token": model.kv_cache_bytes_per_token()}
    return out


def model_summary(model: MoEModel) -> dict[str, Any]:
    """The ``moesim model show --json`` object."""
    a = model.attention
    params = model_params(model)
    return {
        "name": model.name,
        "num_layers": model.num_layers,
        "moe_layers": list(model.moe_layers),
        "num_moe_layers": model.num_moe_layers,
        "hidden_size": model.hidden_size,
        "expert_intermediate_size": model.expert_intermediate_size,
        "num_experts": model.num_experts,
        "num_shared_experts": model.num_shared_experts,
        "shared_expert_intermediate_size": model.shared_expert_intermediate_size,
        "dense_intermediate_size": model.dense_intermediate_size,
        "top_k": model.top_k,
        "gated": model.gated,
        "num_expert_groups": model.num_expert_groups,
        "topk_groups": model.topk_groups,
        "weight_dtype": model.weight_dtype,
        "activation_dtype": model.activation_dtype,
        "dispatch_dtype": model.dispatch_dtype,
        "combine_dtype": model.combine_dtype,
        "precision": precision_summary(model),
        "vocab_size": model.vocab_size,
        "attention": {
            "kind": a.kind,
            "num_heads": a.num_heads,
            "num_kv_heads": a.num_kv_heads,
            "head_dim": a.head_dim,
            "q_lora_rank": a.q_lora_rank,
            "kv_lora_rank": a.kv_lora_rank,
            "qk_nope_head_dim": a.qk_nope_head_dim,
            "qk_rope_head_dim": a.qk_rope_head_dim,
            "v_head_dim": a.v_head_dim,
            "sliding_window": a.sliding_window,
        },
        "expert_params": model.expert_params,
        "expert_bytes": model.expert_bytes(),
        "expert_bytes_bf16": model.expert_bytes("bf16"),
        "expert_bytes_per_layer": model.expert_bytes() * model.num_experts,
        "routed_expert_bytes": model.expert_bytes() * model.num_experts * model.num_moe_layers,
        "expert_flops_per_token": model.expert_flops_per_token,
        "activation_bytes_per_token": model.activation_bytes_per_token,
        "kv_cache_bytes_per_token": model.kv_cache_bytes_per_token(),
        "tensors": tensor_summary(model),
        "params": params,
        "source": model.source,
    }


def builtin_models() -> list[str]:
    return builtin_names("model")


def builtin_model_path(name: str) -> Path:
    return builtin_dir("model") / f"{name}.yaml"
