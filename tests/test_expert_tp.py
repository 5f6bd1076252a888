"""Tensor parallelism inside experts (``--ep`` below the GPU count): EP groups in the plan file, the
dispatch to a group, 1/expert_tp expert shards, the group's all-gather and reduce-scatter on the
links, memory per GPU, exports, and bit-identical results at expert_tp = 1."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from moesim.cli import main
from moesim.cost import CostModel, ops
from moesim.errors import UserError
from moesim.memory import MemoryModel
from moesim.parallel import Parallelism
from moesim.plans.default import default_plan
from moesim.plans.export import export_sglang, write_vllm_ascend
from moesim.plans.plan import Plan
from moesim.sim import SimConfig, simulate
from moesim.sim.stepcost import StepCoster
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace

TRACE = "deepseek-v2-lite-synth"


@pytest.fixture(scope="module")
def h100x8():
    return load_cluster("h100x8")


@pytest.fixture(scope="module")
def lite():
    return load_model("deepseek-v2-lite")


@pytest.fixture(scope="module")
def trace(lite):
    return RoutingTrace.load(TRACE, model=lite).rows(0, 512)


@pytest.fixture(scope="module")
def runs(h100x8, lite, trace):
    """EP 8 (whole experts) and EP 4 (groups of 2 GPUs), batch 64, checked invariants."""
    out = {}
    for ep in (8, 4):
        cfg = SimConfig(h100x8, lite, trace, batch_size=64, steps=4, ep=ep, check_invariants=True)
        out[ep] = simulate(cfg)
    return out


def test_ep4_on_h100x8_simulates(runs):
    r = runs[4]
    assert r.info["parallel"] == {"tp": 1, "dp": 8, "ep": 4, "expert_tp": 2}
    assert runs[8].info["parallel"] == {"tp": 1, "dp": 8, "ep": 8}
    # every (token, expert) pair reaches its group once: the received copies sum to the trace's pairs
    assert r.rec.tokens.sum() == runs[8].rec.tokens.sum()
    # the group's collectives sit in the experts phase, not in the GPUs' expert compute
    m = 1  # DeepSeek-V2-Lite's first MoE layer column
    assert (r.rec.phase_s[:, m, 2] > r.rec.expert_gpu_s[:, m]).all()
    assert r.summary()["op_class_s"]["mean_per_step_s"]["communication"] > \
        runs[8].summary()["op_class_s"]["mean_per_step_s"]["communication"]


def test_expert_compute_per_gpu_halves_for_the_same_group_load(h100x8, lite):
    """A GPU of an EP group of 2 runs half of each expert (FLOPs and weight bytes) on its group's load."""
    devices = tuple(d.id for d in h100x8.gpus)
    cost = CostModel(h100x8, lite)
    rng = np.random.default_rng(0)
    slot_tokens = rng.integers(200, 400, size=(2, 3, 8, 8))  # [S, L, G, J], the same per GPU / group
    whole = StepCoster(cost, devices, phase="prefill", parallel=Parallelism.of(8)).expert_times(slot_tokens)
    coster = StepCoster(cost, devices, phase="prefill", parallel=Parallelism.of(8, ep=4))
    half = coster.expert_times(slot_tokens)
    # each GPU prices exactly the model with half the expert width: half the FLOPs and weight bytes,
    # the same activations in and out (which, with launches, keep the ratio above one half)
    shard = replace(lite, expert_intermediate_size=lite.expert_intermediate_size // 2)
    rows = np.sort(slot_tokens.reshape(-1, 8), axis=1)
    want = CostModel(h100x8, shard).expert_compute_batch_s([devices[0]] * len(rows), rows)
    assert np.array_equal(np.sort(half.ravel()), np.sort(want))
    full, part = (ops.grouped_expert_counts(m, rows) for m in (lite, shard))
    assert np.allclose(part.flops, full.flops / 2)
    assert np.all((half / whole >= 0.5) & (half / whole < 0.75))


def test_group_collectives_on_nvlink_in_the_timeline(tmp_path, capsys):
    timeline = tmp_path / "ep4.json"
    code = main(["simulate", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", TRACE,
                 "--batch", "64", "--steps", "2", "--ep", "4", "--timeline", str(timeline), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out)["parallel"]["expert_tp"] == 2
    events = json.loads(timeline.read_text())["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    for op in ("allgather", "reducescatter"):
        spans = [e for e in events if e.get("ph") == "X" and e["name"].startswith(f"{op} L")]
        links = {names[e["tid"]] for e in spans if e["pid"] == 2}
        assert links and all("nvswitch" in t for t in links)
        assert all(e["args"]["bytes"] > 0 for e in spans if e["pid"] == 2)
        assert {names[e["tid"]] for e in spans if e["pid"] == 1} == {f"n0.gpu{i}" for i in range(8)}


def test_link_bytes_add_the_group_collectives(runs):
    more = sum(runs[4].rec.link_bytes.values())
    assert more > sum(runs[8].rec.link_bytes.values())


def test_memory_per_gpu_is_the_group_experts_over_expert_tp(runs, h100x8, lite):
    plan = default_plan(lite, h100x8, ep=4)
    assert plan.expert_tp == 2 and plan.placement.shape[1] == 8
    group_slots = int((plan.placement[:, 0] >= 0).sum())  # the group's experts over all MoE layers
    want = group_slots * lite.expert_bytes() / 2
    for d, b in runs[4].memory_breakdown.items():
        assert b["experts"] == pytest.approx(want), d
    assert plan.resident_expert_bytes(lite)["n0.gpu3"] == pytest.approx(want)
    # the same budget holds twice the expert shards per GPU (the planners' slots)
    devices = tuple(d.id for d in h100x8.gpus)
    slots = {}
    for ep in (8, 4):
        layout = MemoryModel.for_run(lite, h100x8, devices, batch_size=64, parallel=Parallelism.of(8, ep=ep))
        slots[ep] = layout.expert_slots(layout.device(devices[0], 40e9))
    assert slots[4] in (2 * slots[8], 2 * slots[8] + 1)


def test_expert_tp_1_is_bit_identical(h100x8, lite, trace):
    a = simulate(SimConfig(h100x8, lite, trace, batch_size=64, steps=3))
    b = simulate(SimConfig(h100x8, lite, trace, batch_size=64, steps=3, ep=8))
    sa, sb = ({k: v for k, v in r.summary().items() if k != "timing"} for r in (a, b))
    assert sa == sb
    assert np.array_equal(a.rec.phase_s, b.rec.phase_s) and a.rec.link_bytes == b.rec.link_bytes


def test_plan_file_records_ep_groups(tmp_path, h100x8, lite):
    plan = default_plan(lite, h100x8, ep=2)
    path = tmp_path / "ep2.yaml"
    plan.save(path)
    d = path.read_text()
    assert "expert_tp: 4" in d and "\nep: 2" in d
    back = Plan.load(path)
    assert back.expert_tp == 4 and np.array_equal(back.placement, plan.placement)
    whole = tmp_path / "ep8.yaml"
    default_plan(lite, h100x8).save(whole)
    assert "expert_tp" not in whole.read_text() and Plan.load(whole).expert_tp == 1
    with pytest.raises(UserError) as e:
        Plan.load(path.write_text(d.replace("\nep: 2", "\nep: 3")) and path)
    assert e.value.field == "ep"
    odd = replace(plan, placement=plan.placement.copy())
    odd.placement[0, 1, 0] = odd.placement[0, 4, 0]  # an expert of the next group
    with pytest.raises(UserError) as e:
        odd.validate(lite)
    assert e.value.field == "placement" and "EP group" in e.value.message


def test_checks_name_the_flag(lite):
    for kw in ({"ep": 3}, {"ep": 16}):
        with pytest.raises(UserError) as e:
            Parallelism.of(8, **kw)
        assert e.value.field == "--ep" and "\n" not in e.value.message
    narrow = replace(lite, expert_intermediate_size=1406)  # 1406 / 4 is not whole
    Parallelism.of(8, ep=4).check_model(narrow)  # groups of 2: 703 columns each
    with pytest.raises(UserError) as e:
        Parallelism.of(8, ep=2).check_model(narrow)
    assert e.value.field == "--ep" and "expert_intermediate_size" in e.value.message


def test_plan_ep_mismatch_and_caches_are_refused(capsys, tmp_path, h100x8, lite):
    path = tmp_path / "ep4.yaml"
    default_plan(lite, h100x8, ep=4).save(path)
    base = ["simulate", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", TRACE, "--steps", "1"]
    for extra, flag in ((["--plan", str(path), "--ep", "8"], "--ep"),
                        (["--ep", "4", "--cache-policy", "lru", "--cache-size", "16"], "--cache-policy")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert flag in err and err.count("\n") == 1


def test_plan_cli_ep_and_exports(tmp_path, capsys, lite):
    out, sg = tmp_path / "p.yaml", tmp_path / "sg.json"
    code = main(["plan", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", TRACE, "--planner",
                 "greedy", "--ep", "4", "--batch-size", "64", "--steps", "2", "--out", str(out),
                 "--export-sglang", str(sg), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (info["gpus"], info["ep"], info["expert_tp"]) == (8, 4, 2)
    plan = Plan.load(out)
    assert plan.expert_tp == 2 and len(plan.devices) == 8
    rows = json.loads(sg.read_text())["physical_to_logical_map"]
    assert len(rows[1]) == 4 * plan.slots_per_device  # 4 EP ranks x the group's slots
    flags = (tmp_path / "sg.json.flags.txt").read_text()
    assert "--tp-size 8 --ep-size 4" in flags
    launch = export_sglang(plan, lite, tmp_path / "again.json")
    assert launch.flags[:4] == ("--tp-size", "8", "--ep-size", "4")
    with pytest.raises(UserError) as e:
        write_vllm_ascend(plan, lite, tmp_path / "va.json")
    assert e.value.field == "expert_tp" and not (tmp_path / "va.json").exists()


def test_a_group_computes_what_its_members_received(h100x8, lite):
    """After the all-gather both GPUs of a group run their shard on all of the group's copies, even
    when the dispatch sent every copy to one of them; the collectives are sized by those copies."""
    from moesim.sim.dispatch import Dispatch

    devices = tuple(d.id for d in h100x8.gpus)
    coster = StepCoster(CostModel(h100x8, lite), devices, phase="decode", parallel=Parallelism.of(8, ep=4))
    L = lite.num_moe_layers
    slot_tokens = np.zeros((1, L, 8, 16), dtype=np.int64)
    slot_tokens[:, :, 0, :4] = 3  # GPU 0 received 12 copies, its group peer GPU 1 none
    d = Dispatch(slot_tokens=slot_tokens, pair_tokens=np.zeros((1, L, 8, 8), dtype=np.int64))
    c = coster.chunk(0, d, np.array([8]), np.array([512]))
    assert np.array_equal(c.expert[..., 0], c.expert[..., 1]) and (c.expert[..., 1] > 0).all()
    assert (c.expert[..., 2:] == 0).all()
    assert c.expert_group_bytes is not None and c.expert_gather is not None
    assert np.allclose(c.expert_group_bytes[0, :, 0, 0], 12 * coster.a2a.dispatch_bytes)
    assert (c.expert_gather[..., :2] > 0).all() and (c.expert_gather[..., 2:] == 0).all()


def test_plan_replan_honours_runtime_tp_dp():
    """``moesim plan --replan`` replays with the run's runtime profile and attention layout."""
    from moesim.workflows.replan import ReplanOptions
    from moesim.workflows.replan_search import ReplanSearch, choose_replan

    only_static = {"static": ReplanOptions(policy="static", batch_tokens=64)}
    times = {}
    for key, kw in (("kernels", {}), ("vllm", {"runtime": "vllm"}), ("tp8", {"tp": 8})):
        req = ReplanSearch(hw="h100x8", model="deepseek-v2-lite", trace=TRACE, batch_tokens=64, **kw)
        times[key] = choose_replan(req, candidates=only_static).candidates["static"].step_time_s
    assert times["vllm"] != times["kernels"] and times["tp8"] != times["kernels"]
