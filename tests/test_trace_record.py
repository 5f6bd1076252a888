"""Recorder: router hooks on tiny random Hugging Face MoE models (offline, no downloads)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from moesim.cli import main  # noqa: E402
from moesim.traces import RoutingTrace  # noqa: E402
from moesim.traces.record import RouterRecorder, load_hf_model, record_prompts  # noqa: E402

CLASSES = [
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "OlmoeForCausalLM",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
]


@pytest.mark.parametrize("cls", CLASSES)
def test_record_tiny_model(cls):
    t = record_prompts(cls, ["hello moe", "xy"], max_new_tokens=3, tiny=True, seed=0)
    assert t.num_tokens == 9 + 3 + 2 + 3
    assert t.phase.tolist() == [0] * 9 + [1] * 3 + [0] * 2 + [1] * 3
    assert t.seq_id.tolist() == [0] * 12 + [1] * 5
    assert t.pos.tolist()[:12] == list(range(12))
    assert (t.expert_ids >= 0).all() and (t.expert_ids < t.num_experts).all()
    s = np.sort(t.expert_ids, axis=-1)
    assert not (s[..., 1:] == s[..., :-1]).any()
    if cls.startswith("Deepseek"):
        assert t.layer_ids.tolist() == [1, 2]  # layer 0 is dense (first_k_dense_replace = 1)
    else:
        assert t.layer_ids.tolist() == [0, 1, 2]


def test_recorded_ids_are_the_routers_topk():
    lm, _ = load_hf_model("MixtralForCausalLM", tiny=True, seed=1)
    rec = RouterRecorder(lm)
    seen = {}

    def grab(module, inputs, output):
        seen["x"] = inputs[0].detach().reshape(-1, inputs[0].shape[-1])

    gate = lm.model.layers[1].mlp.gate
    h = gate.register_forward_hook(grab)
    rec.start_call()
    with torch.no_grad():
        lm(input_ids=torch.tensor([[3, 4, 5, 6]]))
    h.remove()
    rec.close()
    logits = seen["x"] @ gate.weight.T
    want = torch.topk(logits, 2, dim=-1).indices.numpy()
    got = rec.calls[-1][1][0]
    assert np.array_equal(np.sort(got, -1), np.sort(want, -1))


def test_cli_record(tmp_path):
    out = tmp_path / "r.npz"
    assert (
        main(
            [
                "trace",
                "record",
                "--model",
                "qwen3_moe",
                "--tiny",
                "--prompts",
                "ab",
                "--max-new-tokens",
                "2",
                "--name",
                "qwen3-30b-a3b",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    t = RoutingTrace.load(out)
    assert t.model_name == "qwen3-30b-a3b" and t.num_tokens == 4 and t.gate_weights is not None
    assert (
        main(["trace", "record", "--model", "BertModel", "--tiny", "--prompts", "x", "--out", str(out)]) == 2
    )
