"""`moesim hw` and `moesim model` output: JSON shapes of issue 2 and readable text."""

from __future__ import annotations

import json

import pytest

from moesim.cli import main
from moesim.resources import builtin_dir, builtin_names


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return json.loads(out)


def test_hw_show_json_h100x8(capsys) -> None:
    d = run_json(capsys, "hw", "show", "h100x8", "--json")
    assert d["name"] == "h100x8" and d["nodes"] == 1
    gpus = [x for x in d["devices"] if x["kind"] == "gpu"]
    assert len(gpus) == 8
    for g in gpus:
        assert set(g) >= {
            "id",
            "kind",
            "model",
            "node",
            "memory_bytes",
            "memory_bandwidth_bytes_per_s",
            "peak_flops_per_s",
        }
        assert g["memory_bytes"] == 81559 * 2**20  # what nvidia-smi reports for an H100 80GB
        assert g["memory_bandwidth_bytes_per_s"] == pytest.approx(3.35e12)
        assert g["peak_flops_per_s"]["bf16"] == pytest.approx(989.4e12) and g["node"] == 0
    assert [x["id"] for x in gpus] == [f"n0.gpu{i}" for i in range(8)]
    assert {x["kind"] for x in d["devices"]} == {"gpu", "cpu"}
    for link in d["links"]:
        assert set(link) >= {"src", "dst", "kind", "bandwidth_bytes_per_s", "latency_s"}
    assert sum(1 for ln in d["links"] if ln["kind"] == "nvlink4") == 8


def test_hw_show_nodes_flag(capsys) -> None:
    d = run_json(capsys, "hw", "show", "h100x8", "--nodes", "3", "--json")
    assert d["nodes"] == 3 and len([x for x in d["devices"] if x["kind"] == "gpu"]) == 24
    assert {x["node"] for x in d["devices"]} == {0, 1, 2}


def test_hw_show_text(capsys) -> None:
    assert main(["hw", "show", "h100x8x4"]) == 0
    out = capsys.readouterr().out
    assert "n0.gpu[0-7]  gpu   h100-sxm5" in out
    assert "gpu-gpu across nodes  n0.gpu0 > n0.nic0 > ib > n3.nic7 > n3.gpu7" in out
    assert "ib-ndr" in out and "48.5 GB/s" in out


def test_hw_list(capsys) -> None:
    d = run_json(capsys, "hw", "list", "--json")
    names = {p["name"]: p for p in d["profiles"]}
    assert set(names) == set(builtin_names("hardware")) | set(builtin_names("catalog"))
    assert all(names[n]["kind"] == "cluster" for n in builtin_names("hardware"))
    assert names["devices"]["kind"] == names["links"]["kind"] == "catalog"
    assert names["h100x8x4"]["nodes"] == 4 and names["h100x8x4"]["gpus"] == 32
    assert main(["hw", "list"]) == 0 and "rtx4090-workstation" in capsys.readouterr().out


def test_every_file_in_hardware_validates(capsys) -> None:
    files = sorted(str(p) for p in builtin_dir("hardware").glob("*.yaml"))
    assert len(files) >= 12
    d = run_json(capsys, "hw", "validate", *files, "--json")
    assert d["ok"] and all(f["ok"] for f in d["files"])


def test_model_show_json_deepseek_v3(capsys) -> None:
    d = run_json(capsys, "model", "show", "deepseek-v3", "--json")
    assert d["name"] == "deepseek-v3" and d["num_layers"] == 61
    assert d["moe_layers"] == list(range(3, 61)) and len(d["moe_layers"]) == 58
    assert (d["num_experts"], d["num_shared_experts"], d["top_k"]) == (256, 1, 8)
    assert d["hidden_size"] == 7168 and d["expert_intermediate_size"] == 2048
    assert d["expert_bytes"] == 3 * 7168 * 2048


def test_model_show_text_and_list(capsys) -> None:
    assert main(["model", "show", "mixtral-8x7b"]) == 0
    out = capsys.readouterr().out
    assert "routed experts          8, top-2" in out and "GQA, 32 heads / 8 KV heads" in out
    d = run_json(capsys, "model", "list", "--json")
    assert {m["name"] for m in d["models"]} == set(builtin_names("model"))
    assert main(["model", "list"]) == 0 and "switch-base-128" in capsys.readouterr().out
