"""Real streams for the drift tests and benchmark, built from the shared traces (read in place).

Each recipe returns a RoutingTrace or skips (tests) / is left out (benchmark) when the shared
traces are absent. ``tokens`` limits a stream to its first rows (whole sequences where possible),
so the tests run on parts of the long ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from moesim.traces import RoutingTrace
from moesim.traces.streams import concatenate, reorder_sequences, sequence_bounds

DEEPSEEK = "deepseek-v2-lite-chat-prefill/deepseek_v2_lite_puffin_prefill.npz"
DEEPSEEK_TEST = "deepseek-v2-lite-chat-prefill/deepseek_v2_lite_testset_prefill.npz"
MIXTRAL = "mixtral-8x7b-instruct-vllm/mixtral_gsm8k_humaneval_decode.npz"
QWEN = "qwen1.5-moe-a2.7b-vllm-5layers/qwen15_moe_gsm8k_vllm_stream.npz"
OLMOE = "olmoe-1b-7b-vllm-layer0/olmoe_gsm8k_vllm_layer0_stream.npz"
FLAME = "flame-moe-290m/flame_moe_290m_prefill_4x512.npz"
FLAME_FIRST = "flame-moe-290m/flame_moe_290m_first10tok_64seq.npz"
CODE_MARKS = ("def", "import", "{", "}", "();", "return", "#include", "print(", "=>", "const", "function",
              "SELECT", "</")
"""A Puffin prompt with one of these in its token text is a code prompt (the subject sets)."""


def _head(trace: RoutingTrace, tokens: int | None) -> RoutingTrace:
    """The first whole sequences holding about ``tokens`` rows (all rows when None)."""
    if tokens is None or tokens >= trace.num_tokens:
        return trace
    b = sequence_bounds(trace)
    cut = int(b[np.searchsorted(b, tokens)]) if b[-1] > tokens and len(b) > 2 else tokens
    return trace.rows(0, max(cut, 1))


def _real_rows(trace: RoutingTrace) -> RoutingTrace:
    """Without vLLM's profiling run (rows flagged ``is_profile_dummy``): not traffic."""
    dummy = np.asarray(trace.extras.get("is_profile_dummy", np.zeros(trace.num_tokens)), bool)
    return trace.select(~dummy)


def code_mask(trace: RoutingTrace) -> np.ndarray:
    """bool per sequence: its token text holds a code marker."""
    tok, b = trace.extras["token_str"], sequence_bounds(trace)
    return np.array([any(m in str(x) for x in tok[b[i] : b[i + 1]] for m in CODE_MARKS)
                     for i in range(len(b) - 1)])


def puffin(root: Path, tokens: int | None = None) -> RoutingTrace:
    return _head(RoutingTrace.load(root / DEEPSEEK), tokens)


def puffin_code_then_text(root: Path, tokens: int | None = None) -> RoutingTrace:
    """Puffin's code prompts, then the others: two halves of different subject sets."""
    t = RoutingTrace.load(root / DEEPSEEK)
    code = code_mask(t)
    halves = [reorder_sequences(t, np.flatnonzero(sel)) for sel in (code, ~code)]
    if tokens is not None:
        halves = [_head(h, tokens // 2) for h in halves]
    return concatenate(halves)


def puffin_shuffled(root: Path, tokens: int | None = None) -> RoutingTrace:
    """Puffin's prompts in random order (seed 0): a stationary real stream."""
    t = RoutingTrace.load(root / DEEPSEEK)
    order = np.random.default_rng(0).permutation(len(sequence_bounds(t)) - 1)
    return _head(reorder_sequences(t, order), tokens)


def deepseek_puffin_test_puffin(root: Path, tokens: int | None = 6000) -> RoutingTrace:
    """Two DeepSeek-V2-Lite recordings concatenated (same model): Puffin, the test set, Puffin again."""
    p = RoutingTrace.load(root / DEEPSEEK)
    first = _head(p, tokens)
    second = _head(p.rows(first.num_tokens, p.num_tokens), tokens)
    return concatenate([first, RoutingTrace.load(root / DEEPSEEK_TEST), second])


def mixtral(root: Path, tokens: int | None = None) -> RoutingTrace:
    """GSM8K then HumanEval requests, as recorded."""
    return _head(RoutingTrace.load(root / MIXTRAL), tokens)


def qwen(root: Path, tokens: int | None = None) -> RoutingTrace:
    return _head(_real_rows(RoutingTrace.load(root / QWEN)), tokens)


def olmoe(root: Path, tokens: int | None = None) -> RoutingTrace:
    return _head(_real_rows(RoutingTrace.load(root / OLMOE)), tokens)


def flame_concat(root: Path, tokens: int | None = None) -> RoutingTrace:
    """Two FLAME-MoE recordings concatenated (same model): 4 x 512-token prefills, then 64 x 10."""
    return concatenate([RoutingTrace.load(root / FLAME), RoutingTrace.load(root / FLAME_FIRST)])


STREAMS: dict[str, Callable[..., RoutingTrace]] = {
    "deepseek puffin": puffin,
    "deepseek puffin shuffled (stationary)": puffin_shuffled,
    "deepseek code | text prompts": puffin_code_then_text,
    "deepseek puffin | test set | puffin": deepseek_puffin_test_puffin,
    "mixtral gsm8k | humaneval": mixtral,
    "qwen1.5 gsm8k stream": qwen,
    "olmoe gsm8k stream (layer 0)": olmoe,
    "flame 4x512 | 64x10": flame_concat,
}
