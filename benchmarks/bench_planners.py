"""Placement planners side by side: imbalance, predicted/simulated step time, solve time, gap.

    python benchmarks/bench_planners.py [--time-limit 60] [--quick]

Cases (each planner measured in the same run, so ratios are against contiguous and EPLB here):
  1. shared DeepSeek-V2-Lite prefill trace, h100x8, 9 slots per GPU (72), train first half / eval second;
  2. shared Mixtral-8x7B decode trace, h100x8, 2 slots per GPU;
  3. the V2-Lite trace on two H100 nodes (16 GPUs x 5 slots), tokens starting where they are
     (origin "even": data-parallel attention; "previous-layer": tokens stay with their last expert),
     and with locality-aware dispatch (``dispatch="local"``, planned for and simulated);
  4. DeepSeek-V3 scale: 58 layers x 256 experts, Zipf(1.2) loads, 64 GPUs x 5 slots, tokens objective.
"Predicted" is the ILP's own model (cost model + all-to-all) on the evaluation load; "simulated" is
moesim.sim on the evaluation tokens, when the simulator is installed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from moesim.planners import PLANNERS, PlanRequest, plan
from moesim.planners.base import gpu_imbalance
from moesim.planners.placement_ilp import predict_moe_step
from moesim.sim.config import SimConfig
from moesim.sim.engine import simulate
from moesim.specs import load_cluster, load_model
from moesim.traces.trace import RoutingTrace

SHARED = Path(os.environ.get("MOESIM_SHARED_TRACES",
                             Path(__file__).resolve().parents[2] / "shared" / "traces"))
V2 = SHARED / "deepseek-v2-lite-chat-prefill" / "deepseek_v2_lite_puffin_prefill.npz"
MIXTRAL = SHARED / "mixtral-8x7b-instruct-vllm" / "mixtral_gsm8k_humaneval_decode.npz"
NAMES = tuple(PLANNERS)


def load_ids(path: Path) -> SimpleNamespace:
    d = np.load(path, allow_pickle=False)
    return SimpleNamespace(expert_ids=d["expert_ids"], seq_id=d["seq_id"])


def load_matrix(ids: np.ndarray, E: int) -> np.ndarray:
    return np.stack([np.bincount(ids[:, layer][ids[:, layer] >= 0], minlength=E)
                     for layer in range(ids.shape[1])]).astype(float)


def simulate_step_s(cluster, model, trace_path: Path, rows: slice, p,
                    dispatch: str = "even") -> float | str | None:
    """Mean simulated step time of ``p`` on the trace rows (prefill: whole prompts, ~4,096 tokens a
    step); the error text when the simulator fails."""
    trace = RoutingTrace.load(trace_path, model=model)
    ev = trace.rows(rows.start, rows.stop)
    decode = (np.asarray(ev.phase) == 1).mean() > 0.5
    batch = 4096 if decode else max(1, round(4096 * len(np.unique(ev.seq_id)) / ev.num_tokens))
    cfg = SimConfig(cluster=cluster, model=model, trace=ev, plan=p, batch_size=batch,
                    phase="decode" if decode else "prefill", dispatch=dispatch)
    try:
        latency = simulate(cfg, None).summary()["step_latency_s"]
    except Exception as e:  # a benchmark reports a simulator failure and goes on
        return f"sim failed: {type(e).__name__}"
    return float(latency["mean"]) if latency.get("mean") is not None else None


def compare(title: str, model, cluster, slots: int, trace: SimpleNamespace, path: Path | None,
            time_limit: float, names=NAMES, **params) -> dict[str, dict[str, float]]:
    ids = trace.expert_ids
    half = ids.shape[0] // 2
    train = SimpleNamespace(expert_ids=ids[:half])
    evaluation = SimpleNamespace(expert_ids=ids[half:])
    E = model.num_experts
    tr, ev = load_matrix(ids[:half], E), load_matrix(ids[half:], E)
    gpus = tuple(d.id for d in cluster.gpus)
    req = PlanRequest(model, cluster, gpus, slots, tr, trace=train, time_limit_s=time_limit, params=params)
    ereq = PlanRequest(model, cluster, gpus, slots, ev, trace=evaluation, params=params)
    print(f"\n== {title}: {model.name}, {cluster.name} ({len(gpus)} GPUs x {slots} slots), "
          f"train {half} / eval {ids.shape[0] - half} tokens, {params or ''}")
    print(f"{'planner':<18}{'imb train':>10}{'imb eval':>10}{'pred eval ms':>13}{'sim eval ms':>12}"
          f"{'solve s':>9}{'gap':>8}{'dup':>5}")
    out = {}
    for name in names:
        t0 = time.perf_counter()
        p = plan(name, req)
        solve = time.perf_counter() - t0
        pred, units = predict_moe_step(ereq, p.placement)
        sim = (simulate_step_s(cluster, model, path, slice(half, ids.shape[0]), p,
                               dispatch=str(params.get("dispatch", "even"))) if path else None)
        out[name] = {"imb_train": gpu_imbalance(p, tr), "imb_eval": gpu_imbalance(p, ev), "pred": pred,
                     "sim": sim, "solve": solve}
        if isinstance(sim, str):
            print(f"  ({name}: {sim})")
        scale = 1e3 if units.startswith("seconds") else 1.0
        print(f"{name:<18}{out[name]['imb_train']:>10.4f}{out[name]['imb_eval']:>10.4f}{pred * scale:>13.3f}"
              f"{_ms(sim):>12}{solve:>9.2f}"
              f"{'-' if p.gap is None else f'{100 * p.gap:.2f}%':>8}"
              f"{p.params.get('eplb_duplicate_slots', '-')!s:>5}")
    if "ilp" in out and "eplb" in out:
        print(f"ilp vs eplb: eval imbalance {out['ilp']['imb_eval']:.4f} vs {out['eplb']['imb_eval']:.4f}; "
              f"predicted eval step {out['eplb']['pred'] / out['ilp']['pred']:.3f}x faster")
    return out


def _ms(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value * 1e3:.3f}"


def zipf(L: int, E: int, s: float, tokens: int = 65536, topk: int = 8, seed: int = 0) -> np.ndarray:
    """Zipf(s) expert popularity, hot experts permuted per layer, multinomial token counts.

    A synthetic stress load (real DeepSeek-V3 routing is flatter); no external source.
    """
    rng = np.random.default_rng(seed)
    base = 1 / np.arange(1, E + 1) ** s
    base /= base.sum()
    P = np.stack([base[np.argsort(rng.permutation(E))] for _ in range(L)])
    return np.stack([rng.multinomial(tokens * topk, P[layer]) for layer in range(L)]).astype(float)


def v3_scale(time_limit: float) -> None:
    model = load_model("deepseek-v3")
    cluster = load_cluster("h100x8x4", nodes=8)
    gpus = tuple(d.id for d in cluster.gpus)
    load = zipf(model.num_moe_layers, model.num_experts, 1.2)
    print(f"\n== DeepSeek-V3 scale: {model.num_moe_layers} layers x {model.num_experts} experts, Zipf(1.2), "
          f"{len(gpus)} GPUs x 5 slots, time limit {time_limit:g} s, {os.cpu_count()} CPUs")
    for name in ("eplb", "greedy", "ilp"):
        req = PlanRequest(model, cluster, gpus, 5, load, time_limit_s=time_limit, params={"units": "tokens"})
        t0 = time.perf_counter()
        p = plan(name, req)
        solve = time.perf_counter() - t0
        extra = f" bound {p.bound:.1f} gap {100 * p.gap:.2f}%" if p.gap is not None else ""
        print(f"{name:<8} imbalance {gpu_imbalance(p, load):.4f} solve {solve:.1f} s{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=60.0, help="ILP time limit per case (s)")
    ap.add_argument("--quick", action="store_true", help="10 s ILP limits, skip the V3-scale case")
    args = ap.parse_args()
    tl = 10.0 if args.quick else args.time_limit
    h100x8 = load_cluster("h100x8")
    if V2.exists():
        v2 = load_ids(V2)
        compare("shared DeepSeek-V2-Lite trace", load_model("deepseek-v2-lite"), h100x8, 9, v2, V2, tl)
        two = load_cluster("h100x8x4", nodes=2)
        for origin in ("even", "previous-layer"):
            compare("two nodes", load_model("deepseek-v2-lite"), two, 5, v2, None, tl, origin=origin)
        # locality-aware dispatch (own GPU, else own node, else any replica) planned and simulated
        compare("two nodes, local dispatch", load_model("deepseek-v2-lite"), two, 5, v2, V2, tl,
                dispatch="local")
    else:
        print(f"shared trace {V2} not found; skipping the DeepSeek-V2-Lite cases")
    if MIXTRAL.exists():
        compare("shared Mixtral-8x7B trace", load_model("mixtral-8x7b"), h100x8, 2, load_ids(MIXTRAL),
                MIXTRAL, tl)
    if not args.quick:
        v3_scale(args.time_limit)


if __name__ == "__main__":
    main()
