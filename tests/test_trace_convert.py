"""Converters: the shared raw files reproduce the shared .npz; SGLang, vLLM and count formats."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import UserError
from moesim.traces import RoutingTrace
from moesim.traces.convert import convert, guess_format
from moesim.traces.counts import LoadCounts
from tests.conftest import shared_trace

MIXTRAL = "mixtral-8x7b-instruct-vllm"
DSV2 = "deepseek-v2-lite-chat-prefill"


def test_jsonl_reproduces_shared_mixtral_npz(tmp_path):
    raw = [
        shared_trace(f"{MIXTRAL}/raw/gsm8k_2_routing.jsonl"),
        shared_trace(f"{MIXTRAL}/raw/humaneval_2_routing.jsonl"),
    ]
    out = tmp_path / "mx.npz"
    assert (
        main(["trace", "convert", *map(str, raw), str(out), "--model", "mixtral-8x7b", "--phase", "decode"])
        == 0
    )
    got = RoutingTrace.load(out)
    ref = RoutingTrace.load(shared_trace(f"{MIXTRAL}/mixtral_gsm8k_humaneval_decode.npz"))
    assert np.array_equal(got.expert_ids, ref.expert_ids)
    assert np.allclose(got.gate_weights, ref.gate_weights, equal_nan=True)
    for key in ("seq_id", "pos", "phase", "layer_ids"):
        assert np.array_equal(getattr(got, key), getattr(ref, key)), key
    assert got.meta["missing_layer_slots"] == ref.meta["missing_layer_slots"] == 52
    assert got.model_name == "mixtral-8x7b"


def test_deepseek_csv_reproduces_first_prompts():
    for raw, npz in (
        ("prompt_1_data.csv", "deepseek_v2_lite_puffin_prefill.npz"),
        ("prompt_1_data_formatted.csv", "deepseek_v2_lite_testset_prefill.npz"),
    ):
        got = convert([shared_trace(f"{DSV2}/raw_examples/{raw}")], phase="prefill", num_experts=64)
        ref = RoutingTrace.load(shared_trace(f"{DSV2}/{npz}"))
        first = ref.select(ref.seq_id == 0)
        assert np.array_equal(got.expert_ids, first.expert_ids)
        assert np.array_equal(got.layer_ids, ref.layer_ids)
        assert np.array_equal(got.extras["token_str"], first.extras["token_str"])


def _sglang_per_token(path, torch):
    # 3 model layers (layer 0 dense: all -1), 2 passes, physical ids mapped through a redundant map
    phys_map = torch.tensor([[0, 1, 2, 3, 0], [0, 1, 2, 3, 1], [3, 2, 1, 0, 0]], dtype=torch.int32)

    def ids(tokens, base):
        t = torch.full((3, tokens, 8), -1, dtype=torch.int32)
        for i in range(tokens):
            t[1, i, :2] = torch.tensor([(base + i) % 5, (base + i + 1) % 5])
            t[2, i, :2] = torch.tensor([(base + 2 * i) % 4, (base + 2 * i + 1) % 4])
        return t

    records = [
        {
            "forward_pass_id": 0,
            "rank": 0,
            "forward_mode": 1,
            "positions": torch.arange(3),
            "extend_seq_lens": [3],
            "topk_ids_of_layer": ids(3, 0),
        },
        {
            "forward_pass_id": 1,
            "rank": 0,
            "forward_mode": 2,
            "positions": torch.tensor([3]),
            "topk_ids_of_layer": ids(1, 3),
        },
    ]
    torch.save({"records": records, "last_physical_to_logical_map": phys_map}, path)
    return phys_map.numpy(), [ids(3, 0).numpy(), ids(1, 3).numpy()]


def test_sglang_per_token(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "expert_distribution_recorder_1_0.pt"
    phys_map, raw = _sglang_per_token(p, torch)
    assert guess_format(p) == "sglang-per-token"
    t = convert([p], top_k=2)
    assert t.layer_ids.tolist() == [1, 2] and t.top_k == 2 and t.num_tokens == 4
    assert t.phase.tolist() == [0, 0, 0, 1] and t.pos.tolist() == [0, 1, 2, 3]
    assert t.extras["step_id"].tolist() == [0, 0, 0, 1]
    phys = np.concatenate([r.transpose(1, 0, 2) for r in raw])[:, 1:, :2]
    want = phys_map[np.array([1, 2])[None, :, None], phys]
    assert np.array_equal(np.sort(t.expert_ids, -1), np.sort(want, -1))


def test_sglang_stat_to_counts(tmp_path):
    torch = pytest.importorskip("torch")
    counts = torch.zeros((5, 3, 4), dtype=torch.int32)
    counts[0] = torch.arange(12).reshape(3, 4)
    counts[1] = 1
    p = tmp_path / "stat.pt"
    torch.save({"rank": 0, "logical_count": counts, "average_utilization_rate_over_window": None}, p)
    lc = convert([p])
    assert isinstance(lc, LoadCounts) and lc.num_steps == 2  # 3 unfilled ring-buffer rows dropped
    assert np.array_equal(lc.load_matrix(1)[0], counts.numpy().sum(0))
    out = tmp_path / "c.npz"
    lc.save(out)
    assert np.array_equal(LoadCounts.load(out).counts, lc.counts)


def test_hostile_pt_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "evil.pt"
    torch.save({"records": [OrderedDict(a=1)], "x": complex(1, 2), "obj": UserError("boom")}, p)
    with pytest.raises(UserError, match="weights_only"):
        convert([p], "sglang-per-token")


def test_vllm_routed_json_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    comps = [
        {
            "prompt_routed_experts": rng.integers(0, 16, (5, 3, 2)).tolist(),
            "routed_experts": rng.integers(0, 16, (4, 3, 2)).tolist(),
        }
        for _ in range(2)
    ]
    p = tmp_path / "out.json"
    p.write_text(json.dumps(comps))
    t = convert([p], num_experts=16, layer_ids=[1, 2, 3])
    assert t.num_tokens == 18 and t.seq_id.tolist() == [0] * 9 + [1] * 9
    assert t.phase.tolist() == ([0] * 5 + [1] * 4) * 2 and t.pos.tolist()[:9] == list(range(9))
    assert np.array_equal(t.expert_ids[:5], np.array(comps[0]["prompt_routed_experts"]))
    q = tmp_path / "out.npz"
    np.savez(q, **{f"{k}_{i}": np.array(c[k], np.int16) for i, c in enumerate(comps) for k in c})
    u = convert([q], "vllm-routed", num_experts=16)
    assert np.array_equal(u.expert_ids, t.expert_ids)


def test_counts_csv_npy_and_shared_aggregate(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("step,layer,expert,count\n0,3,1,5\n0,4,0,2\n1,3,1,1\n")
    lc = convert([csv])
    assert lc.counts.shape == (2, 2, 2) and lc.layer_ids.tolist() == [3, 4] and lc.counts[0, 0, 1] == 5
    npy = tmp_path / "c.npy"
    np.save(npy, np.ones((3, 2, 4), np.int64))
    assert convert([npy]).load_matrix(3).shape == (3, 2, 4)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="pickle"):
        convert([bad], "counts")
    agg = shared_trace("olmoe-mixtral-aggregate-counts/olmoe_mixtral_expert_counts.npz")
    lc = convert([agg], "counts-npz", key="mistral__expert_counts__arxiv", layer_ids=[0, 7, 15])
    assert lc.counts.shape == (1, 3, 8) and lc.counts.sum() == 208896 * 2 * 3


def test_cli_convert_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"dataset": "a", "problem_id": 0, "layer": 0, "token_idx": 0, "experts": [9, 1]}\n')
    assert main(["trace", "convert", str(bad), str(tmp_path / "o.npz"), "--model", "mixtral-8x7b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: error:") and "\n" not in err
    assert main(["trace", "convert", str(tmp_path / "missing.jsonl"), str(tmp_path / "o.npz")]) == 2
