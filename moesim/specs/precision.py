"""Number formats and per-tensor precision: bits per weight, the kernels' type, which tensor uses which.

:data:`DTYPES` is the one table of formats moesim knows: bits per element including block scales
(a packed GGUF ``q4_k_m`` expert is 4.84 bits per weight, not 4), and the plain type kernels and
peaks treat it as (``kernel``). :class:`Precision` says which format each tensor of a model is
served in; fields left ``None`` follow the model's activation dtype (what the cost model assumed
for every non-expert tensor before precision was per tensor). docs/models.md lists the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType

from moesim.errors import UserError


@dataclass(frozen=True)
class DType:
    """One number format: ``bits`` per element including its block scales."""

    name: str
    bits: float
    kernel: str
    """The plain type a kernel runs it as: its own name for plain types, ``int4``/``int8`` for
    GGUF blocks (llama.cpp's GPU and CPU paths take integer dot products), ``fp4`` for MXFP4."""
    source: str = ""

    @property
    def bytes(self) -> float:
        return self.bits / 8.0


# Q4_K_M experts: Q4_K (4.5 bits) gate/up and, in half the layers, Q6_K (6.5625 bits) down projections
# (ggml-org/llama.cpp src/llama-quant.cpp @007dbbf, use_more_bits): 2/3*4.5 + 1/3*(4.5+6.5625)/2 = 4.84.
# The same number is the avx512-q4 CPU kernel's weight_bits in hardware/devices.yaml (a test keeps
# the two equal).
Q4_K_M_BITS = 4.84

_TABLE = (
    DType("fp32", 32, "fp32"),
    DType("tf32", 32, "tf32"),
    DType("bf16", 16, "bf16"),
    DType("fp16", 16, "fp16"),
    DType("fp8", 8, "fp8", "e4m3/e5m2; DeepSeek-V3's 128x128 block scales (fp32 per 16,384 weights) ignored"),
    DType("int8", 8, "int8"),
    DType("int4", 4, "int4", "plain 4-bit values (GPTQ/AWQ group scales ignored)"),
    DType("mxfp4", 4.25, "fp4", "OCP Microscaling v1.0: 32 FP4 (E2M1) elements share one 8-bit E8M0 scale"),
    DType("q8_0", 8.5, "int8", "GGUF block_q8_0: 32 int8 values + one fp16 scale = 34 bytes per 32 "
          "(ggml-org/llama.cpp ggml/src/ggml-common.h)"),
    DType("q4_0", 4.5, "int4", "GGUF block_q4_0: 32 4-bit values + one fp16 scale = 18 bytes per 32 "
          "(ggml-common.h)"),
    DType("q4_k_m", Q4_K_M_BITS, "int4", "llama.cpp Q4_K_M mix of Q4_K (4.5 bpw) and Q6_K (6.5625 bpw) "
          "blocks (src/llama-quant.cpp @007dbbf)"),
    DType("q6_k", 6.5625, "int8", "GGUF block_q6_k: 210 bytes per 256 weights (ggml-common.h)"),
)
DTYPES: Mapping[str, DType] = MappingProxyType({d.name: d for d in _TABLE})
DTYPE_BYTES: Mapping[str, float] = MappingProxyType({d.name: d.bytes for d in _TABLE})
"""Bytes per element of each format (fractional for packed formats)."""


def dtype(name: str, *, field: str = "dtype") -> DType:
    """The format called ``name``; a UserError naming ``field`` and the known names otherwise."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise UserError(f"expected one of {', '.join(DTYPES)}, got {name!r}", field=field) from None


def kernel_dtype(name: str) -> str:
    """The plain type kernels and peaks run ``name`` as (``q4_k_m`` -> ``int4``, ``mxfp4`` -> ``fp4``)."""
    return DTYPES[name].kernel


WEIGHT_TENSORS = ("attention", "dense", "shared_experts", "routed_experts", "embeddings")
"""Weights with their own dtype: attention projections, dense-layer FFNs, shared experts, routed
experts (the model's ``weight_dtype``) and the input embedding + LM head."""
COMPUTE_OPS = ("attention", "dense", "shared_experts", "routed_experts", "lm_head")
"""Ops whose GEMMs may be pinned to a compute dtype (``compute:``); the router runs in the
activation dtype."""
AUTO = "auto"


@dataclass(frozen=True)
class Precision:
    """The dtype of each tensor a model is served with; ``None`` = the model's activation dtype.

    Routed experts are ``MoEModel.weight_dtype`` and the all-to-all payloads
    ``MoEModel.dispatch_dtype``/``combine_dtype``; the rest is here."""

    attention: str | None = None
    dense: str | None = None
    shared_experts: str | None = None
    embeddings: str | None = None
    kv_cache: str | None = None
    compute: tuple[tuple[str, str], ...] = ()
    """(op, dtype) pairs, sorted (a mapping is accepted): the dtype each op of :data:`COMPUTE_OPS`
    runs its GEMMs at; missing ops: ``auto`` (the weights' kernel type where the GPU has a peak for
    it, else the activation dtype)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "compute":
                pairs = dict(value.items() if isinstance(value, Mapping) else value)
                for op, d in pairs.items():
                    if op not in COMPUTE_OPS:
                        raise UserError(f"expected one of {', '.join(COMPUTE_OPS)}, got {op!r}",
                                        field="precision.compute")
                    if d != AUTO:
                        dtype(d, field=f"precision.compute.{op}")
                object.__setattr__(self, "compute", tuple(sorted(pairs.items())))
            elif value is not None:
                dtype(value, field=f"precision.{f.name}")

    def explicit(self) -> dict[str, object]:
        """The fields that were set (``compute`` flattened to ``compute.<op>``)."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)
                                  if f.name != "compute" and getattr(self, f.name) is not None}
        out.update({f"compute.{op}": d for op, d in self.compute})
        return out

    def compute_of(self, op: str) -> str:
        """``op``'s compute dtype, or ``auto``."""
        return dict(self.compute).get(op, AUTO)


PRECISION_KEYS = ("attention", "dense", "shared_experts", "routed_experts", "embeddings", "kv_cache",
                  "dispatch", "combine", "weights", "compute", *(f"compute.{op}" for op in COMPUTE_OPS))
"""Keys of ``--precision key=dtype,...``: ``weights`` sets every weight tensor but the embeddings,
``compute`` every op's compute dtype."""


def parse_precision_flag(text: str, flag: str = "--precision") -> dict[str, str]:
    """``attention=fp8,kv_cache=fp8`` -> ``{"attention": "fp8", "kv_cache": "fp8"}`` (validated)."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in str(text).split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in PRECISION_KEYS:
            raise UserError(f"expected key=dtype pairs with keys among {', '.join(PRECISION_KEYS)}, "
                            f"got {item!r}", field=flag)
        if value != AUTO or not key.startswith("compute"):
            dtype(value, field=f"{flag} {key}")
        out[key] = value
    if not out:
        raise UserError("expected at least one key=dtype pair, e.g. attention=fp8,kv_cache=fp8", field=flag)
    return out


def apply_overrides(base: Precision, overrides: Mapping[str, str]) -> Precision:
    """``base`` with the non-expert, non-payload keys of ``overrides`` (see :data:`PRECISION_KEYS`)."""
    changes: dict[str, object] = {}
    compute = dict(base.compute)
    for key, value in overrides.items():
        if key == "weights":
            changes.update({k: value for k in ("attention", "dense", "shared_experts")})
        elif key == "compute":
            compute = {op: value for op in COMPUTE_OPS}
        elif key.startswith("compute."):
            compute[key.split(".", 1)[1]] = value
        elif key in ("attention", "dense", "shared_experts", "embeddings", "kv_cache"):
            changes[key] = value
    return replace(base, **changes, compute=tuple(sorted(compute.items())))
