"""Block-size configurations for the MoE kernels: a per-shape table, tunable on a GPU.

The grouped GEMM kernel runs one program per (block of ``block_m`` expert-sorted rows, block of
``block_n`` output columns). Which block sizes are fastest depends on the shape (tokens per
expert, hidden and FFN sizes, dtype) and the GPU, as vLLM's per-GPU JSON config files show
(``try_get_optimal_moe_config``, vllm-project/vllm @000d145 vllm/model_executor/layers/fused_moe/
fused_moe.py). The table here maps a shape key to configs bucketed by token count; ``nearest``
picks the bucket closest to the actual token count, as vLLM does.

A tuned table is written by ``moesim.kernels.bench.tune_configs`` on a GPU and read back with
``ConfigTable.load``. Without one, ``default_config`` gives a heuristic: small tiles in decode
(few tokens per expert, the kernel streams weights) and large tiles in prefill (compute bound).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moesim.errors import UserError
from moesim.io import atomic_write_text


@dataclass(frozen=True)
class BlockConfig:
    """Launch parameters of one grouped GEMM. ``num_warps``/``num_stages`` are ignored by the interpreter."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    group_m: int = 1
    """Row blocks that share a column sweep (program-id swizzle for L2 reuse of weight tiles)."""
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise UserError(f"expected a power of two >= 16, found {value}", field=name)
        if self.group_m < 1 or self.num_warps < 1 or self.num_stages < 1:
            raise UserError("group_m, num_warps and num_stages must be >= 1")

    def label(self) -> str:
        """Short text form stored next to every timing (calibration tables keep it)."""
        return (f"BM{self.block_m}-BN{self.block_n}-BK{self.block_k}-G{self.group_m}"
                f"-W{self.num_warps}-S{self.num_stages}")


def shape_key(num_experts: int, hidden: int, ffn: int, dtype: str) -> str:
    """The key of one layer shape in a config table (token count is bucketed inside)."""
    return f"E={num_experts},H={hidden},F={ffn},dtype={dtype}"


def default_config(tokens: int, num_experts: int, top_k: int, hidden: int, ffn: int,
                   dtype: str, *, interpreter: bool = False) -> BlockConfig:
    """Heuristic block sizes when no tuned table has the shape.

    ``tokens * top_k / num_experts`` rows per expert on average: below ~block_m the M tile is
    mostly padding, so decode gets block_m 16; prefill gets 64x128 tiles. The interpreter runs
    programs one after the other in numpy, so there fewer, larger programs are faster.
    """
    rows_per_expert = tokens * top_k / max(num_experts, 1)
    if interpreter:
        return BlockConfig(block_m=16 if rows_per_expert <= 16 else 32, block_n=64, block_k=64)
    small_k = 32 if dtype == "fp32" else 64
    if rows_per_expert <= 16:
        return BlockConfig(block_m=16, block_n=64, block_k=small_k * 2, group_m=1, num_warps=4, num_stages=4)
    if rows_per_expert <= 64:
        return BlockConfig(block_m=32, block_n=64, block_k=small_k, group_m=8, num_warps=4, num_stages=4)
    return BlockConfig(block_m=64, block_n=128, block_k=small_k, group_m=8, num_warps=8, num_stages=3)


def candidate_configs(dtype: str) -> list[BlockConfig]:
    """The search space ``tune_configs`` tries on a GPU: vLLM-style tiles for decode and prefill.

    Shared memory per block stays under Hopper's 227 KiB for the gated kernel (two weight tiles).
    """
    elem = 4 if dtype == "fp32" else 2
    out = []
    for bm in (16, 32, 64, 128):
        for bn in (32, 64, 128):
            for bk in (64, 128):
                for stages in (3, 4):
                    tile_bytes = (bm * bk + 2 * bn * bk) * elem * stages
                    if tile_bytes > 200 * 1024 or (bm >= 128 and bn < 64):
                        continue
                    warps = 8 if bm * bn >= 64 * 128 else 4
                    out.append(BlockConfig(bm, bn, bk, group_m=1 if bm == 16 else 8, num_warps=warps,
                                           num_stages=stages))
    return out


@dataclass(frozen=True)
class ConfigTable:
    """Tuned configs: ``{shape_key: {tokens: BlockConfig}}`` for one device."""

    device: str = ""
    entries: dict[str, dict[int, BlockConfig]] = field(default_factory=dict)

    def nearest(self, key: str, tokens: int) -> BlockConfig | None:
        """The config tuned for the token count nearest ``tokens`` (None if the shape is absent)."""
        buckets = self.entries.get(key)
        if not buckets:
            return None
        best = min(buckets, key=lambda t: (abs(t - tokens), t))
        return buckets[best]

    def lookup(self, tokens: int, num_experts: int, top_k: int, hidden: int, ffn: int, dtype: str,
               *, interpreter: bool = False) -> BlockConfig:
        """Tuned config when the table has the shape, the heuristic otherwise."""
        if not interpreter:
            cfg = self.nearest(shape_key(num_experts, hidden, ffn, dtype), tokens)
            if cfg is not None:
                return cfg
        return default_config(tokens, num_experts, top_k, hidden, ffn, dtype, interpreter=interpreter)

    def with_entry(self, key: str, tokens: int, cfg: BlockConfig) -> ConfigTable:
        entries = {k: dict(v) for k, v in self.entries.items()}
        entries.setdefault(key, {})[int(tokens)] = cfg
        return ConfigTable(device=self.device, entries=entries)

    def to_json(self) -> str:
        body = {"schema": "moesim-kernel-configs/v1", "device": self.device,
                "configs": {k: {str(t): asdict(c) for t, c in sorted(v.items())}
                            for k, v in sorted(self.entries.items())}}
        return json.dumps(body, indent=1) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ConfigTable:
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"expected a JSON kernel config table: {e}", file=path) from None
        if not isinstance(body, dict) or body.get("schema") != "moesim-kernel-configs/v1":
            raise UserError("expected schema 'moesim-kernel-configs/v1'", file=path, field="schema")
        entries: dict[str, dict[int, BlockConfig]] = {}
        allowed = set(BlockConfig.__dataclass_fields__)
        for key, buckets in (body.get("configs") or {}).items():
            if not isinstance(buckets, dict):
                raise UserError("expected a mapping of token counts to configs", file=path, field=key)
            for tokens, cfg in buckets.items():
                if not isinstance(cfg, dict) or not set(cfg) <= allowed:
                    raise UserError(f"expected a config with fields {sorted(allowed)}, found {cfg!r}",
                                    file=path, field=f"{key}.{tokens}")
                try:
                    entries.setdefault(key, {})[int(tokens)] = BlockConfig(**cfg)
                except (UserError, TypeError, ValueError) as e:
                    raise UserError(str(e), file=path, field=f"{key}.{tokens}") from None
        return cls(device=str(body.get("device", "")), entries=entries)
