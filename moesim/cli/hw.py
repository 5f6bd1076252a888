"""``moesim hw``: show, validate and list hardware profiles."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from moesim.cli.common import add_json_flag, add_verb, int_range, print_json
from moesim.errors import EXIT_BAD_INPUT, UserError
from moesim.limits import NODES
from moesim.specs.hardware import Cluster
from moesim.units import format_quantity

_EXAMPLES = """\
  moesim hw list                          built-in profiles and catalogs
  moesim hw show h100x8                   devices, links and typical paths of a DGX H100
  moesim hw show h100x8 --nodes 4 --json  the same node template repeated 4 times, as JSON
  moesim hw show ./my-cluster.yaml        a profile of your own
      needs my-cluster.yaml: your profile (docs/hardware.md), e.g. a copy of hardware/h100x8.yaml
  moesim hw validate h100x8 links         check files completely (units, references, connectivity)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_verb(
        sub,
        "hw",
        help="show, validate and list hardware profiles",
        description="Hardware profiles: devices (GPU, CPU, PIM), links and clusters, from YAML.",
        examples=_EXAMPLES,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    show = actions.add_parser(
        "show",
        help="print a cluster's devices, links and paths",
        description="Load a cluster profile and print its devices, links and typical "
        "transfer paths (bottleneck bandwidth, latency).",
    )
    show.add_argument(
        "profile", metavar="NAME|PATH", help="built-in profile name (see 'hw list') or a YAML file"
    )
    show.add_argument(
        "--nodes",
        type=int_range(1, NODES),
        default=None,
        metavar="N",
        help="number of nodes (overrides the profile's 'nodes')",
    )
    add_json_flag(show)
    show.set_defaults(func=run_show)

    validate = actions.add_parser(
        "validate",
        help="check hardware files completely",
        description="Parse every field of each file: clusters are built and their graph "
        "checked for connectivity; catalogs have every device and link entry "
        "parsed. Exit 2 if any file is wrong.",
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="hardware YAML files (or built-in names)")
    add_json_flag(validate)
    validate.set_defaults(func=run_validate)

    lst = actions.add_parser(
        "list",
        help="list the built-in profiles and catalogs",
        description="List the built-in hardware files: clusters and device/link catalogs.",
    )
    add_json_flag(lst)
    lst.set_defaults(func=run_list)


def cluster_json(cluster: Cluster) -> dict[str, Any]:
    """The ``hw show --json`` object."""
    return {
        "name": cluster.name,
        "nodes": cluster.nodes,
        "source_file": cluster.source_file,
        "devices": [
            {
                "id": d.id,
                "kind": d.kind,
                "model": d.spec.model,
                "node": d.node,
                "memory_bytes": d.spec.memory_bytes,
                "memory_bandwidth_bytes_per_s": d.spec.memory_bandwidth_bytes_per_s,
                "internal_bandwidth_bytes_per_s": d.spec.internal_bandwidth_bytes_per_s,
                "peak_flops_per_s": dict(d.spec.peak_flops_per_s),
                "memory_efficiency": d.spec.memory_efficiency,
                "compute_efficiency": d.spec.compute_efficiency,
                "launch_overhead_s": d.spec.launch_overhead_s,
                "estimated": d.spec.estimated,
                **_cpu_json(d.spec),
            }
            for d in cluster.devices
        ],
        "switches": list(cluster.switches),
        "links": [
            {
                "src": ln.src,
                "dst": ln.dst,
                "kind": ln.spec.kind,
                "bandwidth_bytes_per_s": ln.spec.bandwidth_bytes_per_s,
                "efficiency": ln.spec.efficiency,
                "latency_s": ln.spec.latency_s,
                "host_memory": ln.host_memory,
            }
            for ln in cluster.links
        ],
    }


def _cpu_json(spec: Any) -> dict[str, Any]:
    """CPU only: the expert kernels (in preference order) and the staging memcpy rate."""
    if spec.kind != "cpu":
        return {}
    kernels = [
        {"kind": k.name, "dtype": k.dtype, "weight_bits": k.weight_bits, "serves": list(k.serves),
         "impl": k.impl, "peak_flops_per_s": k.peak_flops_per_s,
         "efficiency_by_rows": [list(p) for p in k.efficiency]}
        for k in spec.cpu_kernels.values()
    ]
    return {"cpu_kernels": kernels, "memcpy_bandwidth_bytes_per_s": spec.memcpy_bandwidth_bytes_per_s}


def run_show(args: argparse.Namespace) -> int:
    from moesim.specs import load_cluster

    cluster = load_cluster(args.profile, nodes=args.nodes)
    if args.json:
        print_json(cluster_json(cluster), verb="hw-show")
    else:
        print(render_cluster(cluster))
    return 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


def _ranges(ids: list[str]) -> str:
    """``n0.gpu0 .. n0.gpu7`` -> ``n0.gpu[0-7]``."""
    m = [re.fullmatch(r"(.*?)(\d+)", i) for i in ids]
    if len(ids) > 1 and all(m) and len({x.group(1) for x in m if x}) == 1:
        nums = [int(x.group(2)) for x in m if x]
        if nums == list(range(nums[0], nums[0] + len(nums))):
            return f"{m[0].group(1)}[{nums[0]}-{nums[-1]}]" if m[0] else ids[0]
    return ", ".join(ids)


def render_cluster(cluster: Cluster) -> str:
    out = [
        f"{cluster.name}: {cluster.nodes} node(s), {len(cluster.devices)} devices, "
        f"{len(cluster.switches)} switches, {len(cluster.links)} links  ({cluster.source_file})",
        "",
    ]
    groups: list[tuple[tuple[int, str, str], list[str]]] = []
    for d in cluster.devices:
        key = (d.node, d.kind, d.spec.model)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(d.id)
        else:
            groups.append((key, [d.id]))
    rows = []
    for (_, kind, _), ids in groups:
        spec = cluster.device(ids[0]).spec
        peaks = ", ".join(f"{k} {format_quantity(v, 'flops')}" for k, v in spec.peak_flops_per_s.items())
        bw = format_quantity(spec.memory_bandwidth_bytes_per_s, "bandwidth")
        if spec.internal_bandwidth_bytes_per_s:
            bw += f" (internal {format_quantity(spec.internal_bandwidth_bytes_per_s, 'bandwidth')})"
        rows.append(
            [
                _ranges(ids),
                kind,
                spec.model + (" (estimated)" if spec.estimated else ""),
                format_quantity(spec.memory_bytes, "bytes"),
                bw,
                peaks,
            ]
        )
    out += [_table(rows, ["devices", "kind", "model", "memory", "bandwidth", "peak (dense)"]), ""]
    cpus = {d.spec.model: d.spec for d in cluster.devices_of("cpu") if d.spec.cpu_kernels}
    rows = [
        [model, k.name, k.dtype, f"{k.weight_bits:g}", format_quantity(k.peak_flops_per_s, "flops"),
         " ".join(f"{r:g}:{f:g}" for r, f in k.efficiency), ",".join(k.serves)]
        for model, spec in cpus.items() for k in spec.cpu_kernels.values()
    ]
    if rows:
        header = ["cpu", "expert kernel", "dtype", "bits", "peak", "efficiency (rows:fraction)", "serves"]
        out += [_table(rows, header), ""]

    kinds: dict[str, list] = {}
    for ln in cluster.links:
        kinds.setdefault(ln.spec.kind, []).append(ln)
    rows = [
        [
            k,
            str(len(lns)),
            format_quantity(lns[0].spec.bandwidth_bytes_per_s, "bandwidth"),
            f"{lns[0].spec.efficiency:g}",
            format_quantity(lns[0].spec.latency_s, "time"),
        ]
        for k, lns in kinds.items()
    ]
    out += [_table(rows, ["link kind", "count", "bandwidth/dir", "efficiency", "latency"]), ""]

    rows = []
    for label, src, dst in _sample_paths(cluster):
        hops = cluster.path(src, dst)
        via = " > ".join([src, *[_other(ln, v) for ln, v in _walk(hops, src)]])
        rows.append(
            [
                label,
                via,
                format_quantity(cluster.bottleneck_bandwidth(src, dst), "bandwidth"),
                format_quantity(cluster.path_latency(src, dst), "time"),
            ]
        )
    if rows:
        out.append(_table(rows, ["path", "route", "bottleneck (effective)", "latency"]))
    return "\n".join(out).rstrip()


def _walk(links: tuple, src: str) -> list[tuple[Any, str]]:
    steps, here = [], src
    for ln in links:
        steps.append((ln, here))
        here = ln.dst if ln.src == here else ln.src
    return steps


def _other(link: Any, here: str) -> str:
    return link.dst if link.src == here else link.src


def _sample_paths(cluster: Cluster) -> list[tuple[str, str, str]]:
    out = []
    gpus0 = cluster.devices_of("gpu", 0)
    if len(gpus0) > 1:
        out.append(("gpu-gpu in node", gpus0[0].id, gpus0[-1].id))
    if gpus0 and cluster.devices_of("cpu", 0):
        out.append(("cpu-gpu", cluster.devices_of("cpu", 0)[0].id, gpus0[0].id))
    if gpus0 and cluster.devices_of("pim", 0):
        out.append(("pim-gpu", cluster.devices_of("pim", 0)[0].id, gpus0[0].id))
    if cluster.nodes > 1 and gpus0:
        far = cluster.devices_of("gpu", cluster.nodes - 1)
        if far:
            out.append(("gpu-gpu across nodes", gpus0[0].id, far[-1].id))
    return out


def run_validate(args: argparse.Namespace) -> int:
    from moesim.specs.hardware_file import validate_file

    results, failed = [], False
    for path in args.paths:
        try:
            summary = validate_file(path)
            results.append({"path": path, "ok": True, "summary": summary})
            if not args.json:
                print(f"ok  {path}: {summary}")
        except UserError as e:
            failed = True
            results.append({"path": path, "ok": False, "error": str(e)})
            print(f"moesim: error: {e}", file=sys.stderr)
    if args.json:
        print_json({"ok": not failed, "files": results}, verb="hw-validate")
    return EXIT_BAD_INPUT if failed else 0


def run_list(args: argparse.Namespace) -> int:
    from moesim.specs import load_cluster
    from moesim.specs.hardware_file import builtin_profiles, profile_info

    profiles = []
    for path in builtin_profiles():
        info = profile_info(path)
        if info["kind"] == "cluster":
            cluster = load_cluster(path)
            gpus = cluster.gpus
            info["gpus"] = len(gpus)
            info["gpu_model"] = gpus[0].spec.model if gpus else None
        profiles.append(info)
    if args.json:
        print_json({"profiles": profiles}, verb="hw-list")
        return 0
    rows = [
        [
            p["name"],
            p["kind"],
            str(p.get("nodes", "")),
            f"{p['gpus']}x {p['gpu_model']}" if p.get("gpus") else "",
            p["description"],
        ]
        for p in profiles
    ]
    print(_table(rows, ["name", "kind", "nodes", "gpus", "description"]))
    return 0
