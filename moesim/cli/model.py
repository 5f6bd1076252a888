"""``moesim model``: show and list MoE model specs."""

from __future__ import annotations

import argparse
from typing import Any

from moesim.cli.common import add_json_flag, add_verb, print_json
from moesim.units import format_quantity

_EXAMPLES = """\
  moesim model list                       built-in model specs
  moesim model show deepseek-v3           layers, experts, attention shape and derived sizes
  moesim model show mixtral-8x7b --json   the same as one JSON object
  moesim model show ./my-model.yaml       a spec of your own (see docs/models.md)
      needs my-model.yaml: your spec (docs/models.md) or a Hugging Face config.json
  moesim model show mixtral-8x7b --precision routed_experts=q4_k_m,kv_cache=fp8
                                          bytes per layer with per-tensor dtypes
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_verb(
        sub,
        "model",
        help="show and list MoE model specs",
        description="MoE model specs: layers, experts, top-k, attention shape, dtypes and derived "
        "sizes, from YAML.",
        examples=_EXAMPLES,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print a model's architecture and derived sizes",
        description="Load a model spec and print its architecture and derived sizes.",
    )
    show.add_argument(
        "model", metavar="NAME|PATH", help="built-in model name (see 'model list') or a YAML file"
    )
    show.add_argument("--weight-dtype", default=None, metavar="DTYPE",
                      help="routed experts in this dtype instead of the spec's, e.g. --weight-dtype q4_k_m")
    show.add_argument("--precision", default=None, metavar="KEY=DTYPE,...",
                      help="per-tensor dtypes (docs/models.md), e.g. --precision attention=fp8,kv_cache=fp8")
    add_json_flag(show)
    show.set_defaults(func=run_show)
    lst = actions.add_parser(
        "list",
        help="list the built-in model specs",
        description="List the built-in model specs with their main numbers.",
    )
    add_json_flag(lst)
    lst.set_defaults(func=run_list)


def run_show(args: argparse.Namespace) -> int:
    from moesim.specs.model_file import model_summary
    from moesim.workflows.inputs import model_of

    summary = model_summary(model_of(args.model, weight_dtype=args.weight_dtype, precision=args.precision))
    if args.json:
        print_json(summary, verb="model-show")
    else:
        print(render_summary(summary))
    return 0


def _layers(layers: list[int], total: int) -> str:
    if layers == list(range(total)):
        return f"all {total}"
    if layers == list(range(layers[0], total)):
        return f"{len(layers)} of {total} (layers {layers[0]}-{total - 1}; the first {layers[0]} dense)"
    return f"{len(layers)} of {total}: {', '.join(map(str, layers))}"


def render_summary(s: dict[str, Any]) -> str:
    a = s["attention"]
    if a["kind"] == "mla":
        attn = (
            f"MLA, {a['num_heads']} heads, q_lora {a['q_lora_rank']}, kv_lora {a['kv_lora_rank']}, "
            f"qk {a['qk_nope_head_dim']}+{a['qk_rope_head_dim']} (rope), v {a['v_head_dim']}"
        )
    else:
        attn = f"GQA, {a['num_heads']} heads / {a['num_kv_heads']} KV heads, head dim {a['head_dim']}"
    if a["sliding_window"]:
        attn += f", sliding window {a['sliding_window']}"
    p = s["params"]
    shared = (
        f"{s['num_shared_experts']} x width {s['shared_expert_intermediate_size']}"
        if s["num_shared_experts"]
        else "none"
    )
    routed = f"{s['num_experts']}, top-{s['top_k']}"
    if s["num_expert_groups"] > 1:
        routed += f" (within {s['topk_groups']} of {s['num_expert_groups']} groups)"
    rows = [
        ("layers", f"{s['num_layers']}"),
        ("MoE layers", _layers(s["moe_layers"], s["num_layers"])),
        ("hidden size", f"{s['hidden_size']}"),
        (
            "expert FFN",
            f"{s['expert_intermediate_size']} ({'gated SwiGLU' if s['gated'] else 'plain 2-matrix'})",
        ),
        ("routed experts", routed),
        ("shared experts", shared),
        ("dense FFN", f"{s['dense_intermediate_size']}" if s["dense_intermediate_size"] else "-"),
        ("attention", attn),
        ("dtypes", f"weights {s['weight_dtype']}, activations {s['activation_dtype']}"),
        (
            "bytes per expert",
            f"{format_quantity(s['expert_bytes'], 'bytes')} ({s['weight_dtype']}); "
            f"{format_quantity(s['expert_bytes_bf16'], 'bytes')} in bf16",
        ),
        ("expert bytes per layer", format_quantity(s["expert_bytes_per_layer"], "bytes")),
        ("all routed experts", format_quantity(s["routed_expert_bytes"], "bytes")),
        ("FLOPs/token/expert", f"{s['expert_flops_per_token'] / 1e6:.1f} MFLOP"),
        ("KV cache per token", format_quantity(s["kv_cache_bytes_per_token"], "bytes")),
        (
            "parameters",
            f"{p['total'] / 1e9:.2f} B total, {p['active_per_token'] / 1e9:.2f} B active per token "
            f"(routed experts {p['routed_experts'] / 1e9:.2f} B)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [
        f"{s['name']}",
        *[f"  {k.ljust(width)}  {v}" for k, v in rows],
        f"  {'source'.ljust(width)}  {' '.join(s['source'].split())}",
        *render_tensors(s),
    ]
    return "\n".join(lines)


def render_tensors(s: dict[str, Any]) -> list[str]:
    """The bytes-per-layer table: every weight tensor and the KV cache in its own dtype."""
    p = s["precision"]
    compute = {op: d for op, d in p["compute"].items() if d != "auto"}
    lines = [f"  precision: activations {s['activation_dtype']}, dispatch {p['dispatch']}, combine "
             f"{p['combine']}, compute {', '.join(f'{k} {v}' for k, v in compute.items()) or 'auto'}",
             "  tensor          dtype   bytes per layer   layers   total"]
    for name, t in s["tensors"].items():
        if name == "kv_cache":
            lines.append(f"  {'kv_cache':<15} {t['dtype']:<7} "
                         f"{format_quantity(t['bytes_per_token_per_layer'], 'bytes') + '/token':>17}   "
                         f"{t['layers']:>6}   {format_quantity(t['bytes_per_token'], 'bytes')}/token")
        elif t["layers"] and t["params_per_layer"]:
            per_layer = format_quantity(t["bytes_per_layer"], "bytes")
            lines.append(f"  {name:<15} {t['dtype']:<7} {per_layer:>17}   "
                         f"{t['layers']:>6}   {format_quantity(t['total_bytes'], 'bytes')}")
    return lines


def run_list(args: argparse.Namespace) -> int:
    from moesim.specs import load_model
    from moesim.specs.model_file import builtin_models, model_summary

    models = []
    for name in builtin_models():
        s = model_summary(load_model(name))
        models.append(
            {
                "name": name,
                "num_layers": s["num_layers"],
                "num_moe_layers": s["num_moe_layers"],
                "num_experts": s["num_experts"],
                "num_shared_experts": s["num_shared_experts"],
                "top_k": s["top_k"],
                "weight_dtype": s["weight_dtype"],
                "total_params": s["params"]["total"],
                "expert_bytes": s["expert_bytes"],
            }
        )
    if args.json:
        print_json({"models": models}, verb="model-list")
        return 0
    header = ["name", "layers", "MoE", "experts", "shared", "top-k", "dtype", "params", "bytes/expert"]
    rows = [
        [
            m["name"],
            str(m["num_layers"]),
            str(m["num_moe_layers"]),
            str(m["num_experts"]),
            str(m["num_shared_experts"]),
            str(m["top_k"]),
            m["weight_dtype"],
            f"{m['total_params'] / 1e9:.1f} B",
            format_quantity(m["expert_bytes"], "bytes"),
        ]
        for m in models
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
