"""Record routing traces from Hugging Face MoE models with forward hooks on their routers.

Supported (transformers 5.x module layout ``model.layers.<i>.mlp.gate``): Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE, DeepSeek-V2, DeepSeek-V3. Their router modules return ``(logits, weights,
indices)``; an older-style router that returns only logits gets a softmax top-k from the config's k.
Each prompt is one sequence: a prefill forward over the prompt (rows with phase 0), then greedy
decode steps with the KV cache (one row each, phase 1).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.traces.trace import DECODE, PREFILL, RoutingTrace

_GATE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate$")

# model_type -> tiny MoE config overrides (random weights, for tests and dry runs)
_TINY_COMMON = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
TINY: dict[str, dict[str, Any]] = {
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "num_experts": 6,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 16,
    },
    "qwen3_moe": {"num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "head_dim": 8},
    "olmoe": {"num_experts": 6, "num_experts_per_tok": 2},
    "deepseek_v2": {
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 16,
        "q_lora_rank": None,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 8,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "num_key_value_heads": 4,
    },
    "deepseek_v3": {
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 16,
        "q_lora_rank": None,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 8,
        "n_group": 2,
        "topk_group": 1,
        "num_key_value_heads": 4,
    },
}
_CLASS_TO_TYPE = {
    "mixtral": "mixtral",
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "olmoe": "olmoe",
    "deepseekv2": "deepseek_v2",
    "deepseekv3": "deepseek_v3",
}


def model_type_of(name: str) -> str | None:
    """``MixtralForCausalLM`` / ``qwen3_moe`` / ``Qwen3MoeConfig`` -> a model_type key of TINY."""
    key = re.sub(r"(forcausallm|config|model)$", "", name.lower().replace("_", "").replace("-", ""))
    return _CLASS_TO_TYPE.get(key)


def num_experts_of(config: Any) -> int:
    for attr in ("num_local_experts", "n_routed_experts", "num_experts"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    raise UserError(f"config {type(config).__name__} has no routed-expert count: not an MoE model")


def load_hf_model(model: str, *, tiny: bool, seed: int):
    """A causal LM in eval mode: tiny random config of a class, random weights from a config, or weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    mtype = model_type_of(model)
    if tiny:
        if mtype is None:
            raise UserError(f"--tiny needs a supported MoE class, got {model!r} (one of {', '.join(TINY)})")
        config = AutoConfig.for_model(mtype, **{**_TINY_COMMON, **TINY[mtype]})
        return AutoModelForCausalLM.from_config(config).eval(), None
    path = Path(model)
    if path.suffix == ".json" and path.is_file():
        config = AutoConfig.from_pretrained(str(path.parent) if path.name == "config.json" else str(path))
        return AutoModelForCausalLM.from_config(config).eval(), None
    try:
        lm = AutoModelForCausalLM.from_pretrained(model).eval()
        from transformers import AutoTokenizer

        return lm, AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load Hugging Face model {model!r}: {str(e).splitlines()[0]}") from None


class RouterRecorder:
    """Forward hooks on every MoE router; collects ``(layer, indices [T, k], weights [T, k])`` per call."""

    def __init__(self, lm: Any):
        self.top_k = int(getattr(lm.config, "num_experts_per_tok", 0) or getattr(lm.config, "top_k", 0))
        self.calls: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []
        self.handles = []
        self.layers: list[int] = []
        for name, module in lm.named_modules():
            m = _GATE.search(name)
            if m:
                self.layers.append(int(m.group(1)))
                self.handles.append(module.register_forward_hook(self._hook(int(m.group(1)))))
        if not self.layers:
            raise UserError(f"no MoE router modules (layers.<i>.mlp.gate) found in {type(lm).__name__}")
        self.layers.sort()

    def _hook(self, layer: int):
        import torch

        def hook(module: Any, inputs: Any, output: Any) -> None:
            if isinstance(output, tuple) and len(output) >= 3:
                weights, idx = output[1], output[2]
            else:  # logits only: softmax top-k as Mixtral-style routers do
                logits = output[0] if isinstance(output, tuple) else output
                weights, idx = torch.topk(torch.softmax(logits.float(), dim=-1), self.top_k, dim=-1)
            idx = idx.detach().reshape(-1, idx.shape[-1]).cpu().numpy()
            w = weights.detach().float().reshape(-1, weights.shape[-1]).cpu().numpy()
            if w.shape != idx.shape:  # a dense [T, E] score matrix: keep the selected entries
                w = np.take_along_axis(w, idx, axis=1)
            self.calls[-1][layer] = (idx, w)

        return hook

    def start_call(self) -> None:
        self.calls.append({})

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _token_ids(prompt: str, tokenizer: Any, vocab: int) -> list[int]:
    if tokenizer is not None:
        return list(tokenizer(prompt)["input_ids"])
    return [b % vocab for b in prompt.encode("utf-8")] or [0]  # tiny random models: bytes as ids


def record_prompts(
    model: str,
    prompts: list[str],
    *,
    max_new_tokens: int = 16,
    tiny: bool = False,
    seed: int = 0,
    name: str | None = None,
) -> RoutingTrace:
    """Prefill + greedy decode of each prompt; the routers' choices as a v1 trace."""
    import torch

    lm, tokenizer = load_hf_model(model, tiny=tiny, seed=seed)
    rec = RouterRecorder(lm)
    rows_ids, rows_w, seq, pos, phase, tok = [], [], [], [], [], []
    vocab = int(lm.config.vocab_size)
    try:
        with torch.no_grad():
            for s, prompt in enumerate(prompts):
                ids = _token_ids(prompt, tokenizer, vocab)
                inp = torch.tensor([ids])
                past = None
                tokens = list(ids)
                for step in range(max_new_tokens + 1):
                    rec.start_call()
                    out = lm(input_ids=inp, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    n = inp.shape[1]
                    call = rec.calls[-1]
                    missing = [layer for layer in rec.layers if layer not in call]
                    if missing:
                        raise RuntimeError(f"routers of layers {missing} did not run")
                    rows_ids.append(np.stack([call[layer][0] for layer in rec.layers], axis=1))
                    rows_w.append(np.stack([call[layer][1] for layer in rec.layers], axis=1))
                    start = len(tokens) - n
                    pos.append(np.arange(start, start + n))
                    seq.append(np.full(n, s))
                    phase.append(np.full(n, PREFILL if step == 0 else DECODE))
                    tok.append(np.asarray(tokens[start : start + n]))
                    if step == max_new_tokens:
                        break
                    nxt = int(out.logits[0, -1].argmax())
                    tokens.append(nxt)
                    inp = torch.tensor([[nxt]])
    finally:
        rec.close()
    cfg = lm.config
    meta = {
        "model": name or getattr(cfg, "model_type", type(lm).__name__),
        "hf_class": type(lm).__name__,
        "source_format": "hf-router-hooks",
        "tiny_random_weights": tiny,
        "k_order": "as returned by the router",
        "gate_weights_semantics": "router output weights",
    }
    return RoutingTrace.build(
        np.concatenate(rows_ids),
        num_experts=num_experts_of(cfg),
        seq_id=np.concatenate(seq),
        pos=np.concatenate(pos),
        phase=np.concatenate(phase),
        layer_ids=np.array(rec.layers),
        gate_weights=np.concatenate(rows_w),
        meta=meta,
        extras={"token_id": np.concatenate(tok).astype(np.int64)},
    )
