"""Engine routing formats in: vLLM routed experts (current and older layouts), SGLang dumps.

The inputs are built from the structures the engines document, not copied from their code:

- vLLM 0.34 ``CompletionResponseChoice.routed_experts``: base64 ``.npy`` (uint8/uint16) of
  ``[num_tokens - 1, num_hidden_layers, top_k]`` over prompt + output, dense layers' columns 0;
  ``prompt_token_ids`` / ``token_ids`` on the choice; ``usage.prompt_tokens``.
- vLLM v0.21 routed-experts replay: response-level ``prompt_routed_experts [P, L_moe, K]`` and
  per-choice ``routed_experts [G, L_moe, K]``.
- SGLang ``expert_distribution.py``: stat ``logical_count`` in a circular buffer, per_pass
  ``global_physical_count``, per_token ``topk_ids_of_layer`` with ``extend_seq_lens``, rank files.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import UserError
from moesim.specs import load_model
from moesim.traces import RoutingTrace
from moesim.traces.convert import convert, guess_format
from moesim.traces.counts import LoadCounts
from moesim.traces.trace import DECODE, PREFILL, UNKNOWN

DSV2 = load_model("deepseek-v2-lite")  # 27 hidden layers, layer 0 dense, 64 experts, top-6


def _b64npy(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _capture(rng, n_rows: int, dtype=np.uint8, model=DSV2) -> np.ndarray:
    """What vLLM's capturer returns: one column per hidden layer, dense columns left at 0."""
    a = np.zeros((n_rows, model.num_layers, model.top_k), dtype)
    for layer in model.moe_layers:
        picks = [rng.choice(model.num_experts, model.top_k, replace=False) for _ in range(n_rows)]
        a[:, layer] = np.stack(picks)
    return a


def _response(choices, prompt_len: int | None = None) -> dict:
    usage = {"prompt_tokens": prompt_len, "completion_tokens": 0, "total_tokens": 0} if prompt_len else {}
    return {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": choices, "usage": usage}


def _choice(i: int, routed: np.ndarray, prompt_len: int | None, gen_len: int, token_lists: bool = True):
    ch = {"index": i, "text": "x", "finish_reason": "length", "routed_experts": _b64npy(routed)}
    if token_lists:
        ch["prompt_token_ids"] = list(range(prompt_len or 0))
        ch["token_ids"] = list(range(gen_len))
    return ch


# ---- vLLM, current layout -----------------------------------------------------------------------


def test_vllm_current_http_response_two_choices(tmp_path):
    rng = np.random.default_rng(0)
    P, gens = 5, (4, 3)
    caps = [_capture(rng, P + g - 1) for g in gens]
    resp = _response([_choice(i, c, P, g) for i, (c, g) in enumerate(zip(caps, gens, strict=True))])
    p = tmp_path / "response.json"
    p.write_text(json.dumps(resp))
    assert guess_format(p) == "vllm-routed"
    t = convert([p], model=DSV2)
    assert t.layer_ids.tolist() == list(DSV2.moe_layers)  # the dense layer-0 column is gone
    assert t.num_tokens == sum(P + g - 1 for g in gens)
    assert t.seq_id.tolist() == [0] * (P + 3) + [1] * (P + 2)
    assert t.phase.tolist() == [PREFILL] * P + [DECODE] * 3 + [PREFILL] * P + [DECODE] * 2
    assert t.pos.tolist()[: P + 3] == list(range(P + 3))
    np.testing.assert_array_equal(t.expert_ids[: P + 3], caps[0][:, 1:])
    # without a model the all-zero dense column is recognised (K > 1 distinct experts per token)
    u = convert([p])
    assert u.layer_ids.tolist() == list(range(1, 27))
    np.testing.assert_array_equal(u.expert_ids, t.expert_ids)


def test_vllm_current_prompt_length_sources(tmp_path):
    rng = np.random.default_rng(1)
    cap = _capture(rng, 6 + 2 - 1, np.uint16)
    one = tmp_path / "one.json"  # one choice, no token lists: usage.prompt_tokens splits it
    one.write_text(json.dumps(_response([_choice(0, cap, None, 2, token_lists=False)], prompt_len=6)))
    t = convert([one], model=DSV2)
    assert t.phase.tolist() == [PREFILL] * 6 + [DECODE]
    bare = tmp_path / "bare.json"  # nothing says where the prompt ends: unknown, not "decode"
    bare.write_text(json.dumps(_response([_choice(0, cap, None, 2, token_lists=False)])))
    u = convert([bare], model=DSV2)
    assert set(u.phase.tolist()) == {UNKNOWN} and u.meta["requests_without_prompt_length"] == 1
    bad = tmp_path / "bad.json"  # 6 prompt + 5 generated - 1 = 10 rows expected, 7 found
    bad.write_text(json.dumps(_response([_choice(0, cap, 6, 5)])))
    with pytest.raises(UserError, match="expected 6 prompt \\+ 5 generated - 1 = 10 routed rows"):
        convert([bad], model=DSV2)


def test_vllm_current_json_lines_of_choices_and_responses(tmp_path):
    rng = np.random.default_rng(2)
    caps = [_capture(rng, n) for n in (4, 6)]
    lines = tmp_path / "choices.jsonl"
    lines.write_text("\n".join(json.dumps(_choice(0, c, 2, len(c) - 1)) for c in caps) + "\n")
    t = convert([lines], model=DSV2)
    assert t.num_tokens == 10 and t.seq_id.tolist() == [0] * 4 + [1] * 6
    resps = tmp_path / "responses.jsonl"
    resps.write_text("\n".join(json.dumps(_response([_choice(0, c, 2, len(c) - 1)])) for c in caps) + "\n")
    u = convert([resps], model=DSV2)
    np.testing.assert_array_equal(u.expert_ids, t.expert_ids)


def test_vllm_offline_npz_with_hidden_layer_columns_via_cli(tmp_path, capsys):
    rng = np.random.default_rng(3)
    caps = [_capture(rng, 9, np.uint16), _capture(rng, 5, np.uint16)]
    q = tmp_path / "offline.npz"
    np.savez(q, routed_experts_0=caps[0], prompt_len_0=np.array(4), routed_experts_1=caps[1],
             prompt_token_ids_1=np.arange(5))
    out = tmp_path / "out.npz"
    # the old reader said "layer ids [0] are not MoE layers" here
    assert main(["trace", "convert", str(q), str(out), "--format", "vllm-routed", "--model", DSV2.name]) == 0
    t = RoutingTrace.load(out, model=DSV2)
    assert t.num_tokens == 14 and t.phase.tolist() == [PREFILL] * 4 + [DECODE] * 5 + [PREFILL] * 5
    np.testing.assert_array_equal(t.expert_ids[9:], caps[1][:, 1:])


def test_vllm_bad_base64_is_one_line(tmp_path, capsys):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(_response([{"index": 0, "routed_experts": "not base64!"}])))
    assert main(["trace", "convert", str(p), str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "choices[0].routed_experts" in err and "base64" in err and "\n" not in err


# ---- vLLM, older layouts ------------------------------------------------------------------------


def test_vllm_v021_nested_response_keeps_generated_rows(tmp_path, capsys):
    """v0.21: prompt rows at the response level, generated rows per choice (the old reader dropped them)."""
    rng = np.random.default_rng(4)
    L, K, E = 3, 2, 16
    prompt = rng.integers(0, E, (5, L, K))
    gens = [rng.integers(0, E, (4, L, K)), rng.integers(0, E, (2, L, K))]
    resp = {"id": "cmpl-2", "prompt_routed_experts": prompt.tolist(),
            "choices": [{"index": i, "text": "", "routed_experts": g.tolist()} for i, g in enumerate(gens)]}
    p = tmp_path / "v021.json"
    p.write_text(json.dumps(resp))
    out = tmp_path / "o.npz"
    assert main(["trace", "convert", str(p), str(out), "--num-experts", str(E)]) == 0
    t = RoutingTrace.load(out)
    assert t.num_tokens == 5 + 4 + 5 + 2
    assert t.phase.tolist() == [PREFILL] * 5 + [DECODE] * 4 + [PREFILL] * 5 + [DECODE] * 2
    np.testing.assert_array_equal(t.expert_ids[5:9], gens[0])
    np.testing.assert_array_equal(t.expert_ids[14:], gens[1])
    assert t.meta["vllm_layouts"] == ["v0.21"]


def test_vllm_flat_list_and_npz_still_load(tmp_path):
    rng = np.random.default_rng(0)
    comps = [{"prompt_routed_experts": rng.integers(0, 16, (5, 3, 2)).tolist(),
              "routed_experts": rng.integers(0, 16, (4, 3, 2)).tolist()} for _ in range(2)]
    p = tmp_path / "out.json"
    p.write_text(json.dumps(comps))
    t = convert([p], num_experts=16, layer_ids=[1, 2, 3])
    assert t.num_tokens == 18 and t.seq_id.tolist() == [0] * 9 + [1] * 9
    assert t.phase.tolist() == ([0] * 5 + [1] * 4) * 2
    q = tmp_path / "out.npz"
    np.savez(q, **{f"{k}_{i}": np.array(c[k], np.int16) for i, c in enumerate(comps) for k in c})
    u = convert([q], "vllm-routed", num_experts=16)
    np.testing.assert_array_equal(u.expert_ids, t.expert_ids)


# ---- SGLang --------------------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def test_sglang_stat_drops_dense_layers(tmp_path):
    torch = _torch()
    counts = torch.zeros((6, DSV2.num_layers, DSV2.num_experts), dtype=torch.int32)
    counts[:4, 1:] = torch.randint(1, 9, (4, DSV2.num_layers - 1, DSV2.num_experts), dtype=torch.int32)
    p = tmp_path / "expert_distribution_recorder_1.0.pt"
    torch.save({"rank": 0, "logical_count": counts, "average_utilization_rate_over_window": None}, p)
    lc = convert([p], model=DSV2)
    assert isinstance(lc, LoadCounts) and lc.num_steps == 4  # unfilled tail dropped
    assert lc.layer_ids.tolist() == list(DSV2.moe_layers)
    lc.check_model(DSV2)  # planners take it (the dense row made them refuse before)
    assert convert([p]).layer_ids.tolist() == list(DSV2.moe_layers)  # found as the empty row


def test_sglang_stat_wrapped_ring_buffer(tmp_path, capsys):
    torch = _torch()
    size, passes = 5, 7
    buf = torch.zeros((size, 2, 4), dtype=torch.int32)
    for i in range(passes):  # the recorder's circular buffer: write at i % size
        buf[i % size] = 0
        buf[i % size, :, 0] = i + 1
    p = tmp_path / "stat.pt"
    torch.save({"rank": 0, "logical_count": buf}, p)
    lc = convert([p], passes=passes)
    assert lc.counts[:, 0, 0].tolist() == [3, 4, 5, 6, 7]  # oldest surviving pass first
    warned = convert([p])
    assert warned.counts[:, 0, 0].tolist() == [6, 7, 3, 4, 5] and warned.meta["warnings"]
    assert main(["trace", "convert", str(p), str(tmp_path / "c.npz")]) == 0
    assert "moesim: warning:" in capsys.readouterr().err
    with pytest.raises(UserError, match="cannot fill a buffer"):
        convert([p], passes=3)


def _phys_map(torch):
    # 3 hidden layers (layer 0 dense), 4 logical experts on 6 physical slots (2 redundant)
    return torch.tensor([[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 2]], dtype=torch.int64)


def test_sglang_per_pass_tp_duplicates_and_dp_sums(tmp_path):
    torch = _torch()
    phys_map = _phys_map(torch)
    gpc = torch.zeros((3, 6), dtype=torch.int32)
    gpc[1] = torch.tensor([1, 2, 3, 4, 5, 6])
    gpc[2] = torch.tensor([6, 5, 4, 3, 2, 1])
    paths = []
    for rank in range(2):  # tensor parallel: both ranks record the same counts
        paths.append(tmp_path / f"expert_distribution_recorder_1.0_{rank}.pt")
        torch.save({"records": [{"forward_pass_id": 0, "rank": rank, "gatherer_key": "primary",
                                 "global_physical_count": gpc}], "last_physical_to_logical_map": phys_map},
                   paths[-1])
    assert guess_format(paths[0]) == "sglang-per-pass"
    lc = convert(paths, model=None)
    assert lc.layer_ids.tolist() == [1, 2] and lc.meta["duplicate_rank_records_dropped"] == 1
    # layer 1: logical 0 <- physical 0 and 4 (1 + 5), logical 1 <- 1 and 5 (2 + 6)
    assert lc.counts[0, 0].tolist() == [6, 8, 3, 4]
    assert lc.counts[0, 1].tolist() == [3, 4, 5 + 1, 6 + 2]  # layer 2: map [3, 2, 1, 0, 3, 2]
    assert convert(paths, ranks="sum").counts[0].sum() == 2 * lc.counts[0].sum()  # SGLang's reader sums
    # DP attention: ranks record different tokens, so they add up
    torch.save({"records": [{"forward_pass_id": 0, "rank": 1, "global_physical_count": gpc * 2}],
                "last_physical_to_logical_map": phys_map}, paths[1])
    assert convert(paths).counts[0].sum() == 3 * lc.counts[0].sum()


def _per_token_records(torch, rank: int):
    """Pass 0 extends two requests (3 and 2 tokens); passes 1-2 decode; pass 3 extends a new one."""

    def ids(n, seed):
        g = torch.Generator().manual_seed(seed)
        t = torch.full((3, n, 8), -1, dtype=torch.int32)
        t[1:, :, :2] = torch.randint(0, 6, (2, n, 2), generator=g)
        return t

    return [
        {"forward_pass_id": 0, "rank": rank, "forward_mode": 1, "input_ids": [1, 2, 3, 4, 5],
         "positions": torch.tensor([0, 1, 2, 0, 1]), "extend_seq_lens": [3, 2],
         "topk_ids_of_layer": ids(5, 0)},
        {"forward_pass_id": 1, "rank": rank, "forward_mode": 2, "input_ids": [6, 7],
         "positions": torch.tensor([3, 2]), "extend_seq_lens": None, "topk_ids_of_layer": ids(2, 1)},
        {"forward_pass_id": 2, "rank": rank, "forward_mode": 2, "input_ids": [8],
         "positions": torch.tensor([4]), "extend_seq_lens": None, "topk_ids_of_layer": ids(1, 2)},
        {"forward_pass_id": 3, "rank": rank, "forward_mode": 1, "input_ids": [9, 10],
         "positions": torch.tensor([0, 1]), "extend_seq_lens": [2], "topk_ids_of_layer": ids(2, 3)},
    ]


def test_sglang_per_token_rank_files_and_requests(tmp_path):
    torch = _torch()
    paths = []
    for rank in range(2):  # a TP=2 run: both rank files hold the same records
        paths.append(tmp_path / f"expert_distribution_recorder_1.0_{rank}.pt")
        torch.save({"records": _per_token_records(torch, rank),
                    "last_physical_to_logical_map": _phys_map(torch)}, paths[-1])
    t = convert(paths, top_k=2)
    assert t.num_tokens == 10  # not 20: the second rank's copy is dropped
    assert t.seq_id.tolist() == [0, 0, 0, 1, 1, 0, 1, 0, 2, 2]
    assert t.phase.tolist() == [PREFILL] * 5 + [DECODE] * 3 + [PREFILL] * 2
    assert t.extras["step_id"].tolist() == [0] * 5 + [1, 1, 2, 3, 3]
    assert t.layer_ids.tolist() == [1, 2]
    assert convert(paths, top_k=2, ranks="sum").num_tokens == 20


def test_sglang_per_token_chunked_prefill_continues_a_request(tmp_path):
    torch = _torch()
    ids = torch.full((3, 3, 8), -1, dtype=torch.int32)
    ids[1:, :, :2] = 1
    recs = [{"forward_pass_id": 0, "rank": 0, "forward_mode": 1, "positions": torch.tensor([0, 1, 2]),
             "extend_seq_lens": [3], "topk_ids_of_layer": ids},
            {"forward_pass_id": 1, "rank": 0, "forward_mode": 1, "positions": torch.tensor([3, 4, 5]),
             "extend_seq_lens": [3], "topk_ids_of_layer": ids}]
    p = tmp_path / "d.pt"
    torch.save({"records": recs, "last_physical_to_logical_map": _phys_map(torch)}, p)
    t = convert([p], top_k=2)
    assert t.seq_id.tolist() == [0] * 6 and t.pos.tolist() == list(range(6))


def test_pt_without_torch_is_one_line(tmp_path, capsys, monkeypatch):
    p = tmp_path / "dump.pt"
    p.write_bytes(b"PK\x03\x04 not really")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch -> ImportError
    assert main(["trace", "convert", str(p), str(tmp_path / "o.npz"), "--format", "sglang-stat"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install torch" in err and "\n" not in err
