"""Hardware profiles (YAML) -> :class:`~moesim.specs.hardware.Cluster`; validation of catalog files.

A cluster profile names a node template (devices by catalog name and count, switch vertices,
links between vertices written as patterns such as ``gpu[0-7]``) and a fabric joining the nodes
(``ib``). The node template is repeated ``nodes`` times; ids are ``n{node}.{vertex}``. See
docs/hardware.md for every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import networkx as nx

from moesim.errors import UserError
from moesim.limits import CLUSTER_LINKS, NODES, VERTICES_PER_NODE
from moesim.resources import builtin_dir, builtin_names
from moesim.specs.hardware import Cluster, Device, DeviceSpec, Link, LinkSpec
from moesim.specs.hardware_catalog import DEVICE_KINDS, Catalog, validate_catalog
from moesim.specs.yaml_fields import Fields, load_document, origin_of

_COMMON_KEYS = {"kind", "name", "description", "source", "verified", "estimated", "notes", "catalogs",
                "devices", "links"}
_TOP_KEYS = frozenset(_COMMON_KEYS | {"extends", "nodes", "node", "fabric", "calibration"})
_CATALOG_KEYS = frozenset(_COMMON_KEYS)
_NODE_KEYS = frozenset({"devices", "switches", "links"})
_NODE_DEVICE_KEYS = frozenset({"model", "count"})
_LINK_USE_KEYS = frozenset({"link", "from", "to", "mesh", "host_memory"})
_FABRIC_KEYS = frozenset({"switches", "links"})
_PATTERN = re.compile(r"^(?P<stem>[A-Za-z_][A-Za-z0-9_-]*?)(?:\[(?P<range>[0-9,\- ]+)\]|(?P<star>\*))?$")
_DEVICE_NAME = re.compile(r"^(gpu|cpu|pim)\d+$")


def load_cluster(name_or_path: str | Path, *, nodes: int | None = None) -> Cluster:
    """Load a cluster profile by built-in name (``h100x8``) or path; ``nodes`` overrides its node count."""
    doc = load_document("hardware", name_or_path)
    top = doc.fields
    kind = top.str("kind", choices=("cluster", "catalog"))
    if kind != "cluster":
        raise top.error(
            "kind", "expected a cluster profile (kind: cluster), got a catalog of devices and links"
        )
    top.check_keys(_TOP_KEYS, required=("source", "node"))
    top.str("source")
    if nodes is not None:
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise UserError(f"expected a node count >= 1, got {nodes!r}", field="--nodes")
        NODES.check(nodes, field="--nodes")
    count = nodes if nodes is not None else top.int("nodes", 1, minimum=1, maximum=NODES)
    # A profile that extends another keeps its own name, not its parent's.
    own_name = "name" in top and origin_of(doc.origins, "name", str(doc.path)) == str(doc.path)
    name = top.str("name") if own_name else doc.path.stem
    cluster = _build(name, count, top, Catalog.for_document(doc), str(doc.path))
    if "calibration" not in top:
        return cluster
    origin = Path(origin_of(doc.origins, "calibration", str(doc.path)))
    return replace(cluster, calibration_dir=_calibration_dir(top, origin))


def _calibration_dir(top: Fields, origin: Path) -> str:
    """A calibration folder named in a profile: relative to the file that names it, or built in."""
    text = top.str("calibration")
    for candidate in (origin.parent / text, builtin_dir("hardware") / "calibration" / text):
        if candidate.is_dir():
            return str(candidate)
    raise top.error(
        "calibration",
        f"expected a folder written by 'moesim calibrate --out DIR' (relative to {origin.name} or under "
        f"hardware/calibration/), got {text!r}",
    )


@dataclass(frozen=True)
class _NodeTemplate:
    devices: tuple[tuple[str, DeviceSpec], ...]  # (vertex name, spec) in id order
    switches: tuple[str, ...]


def _node_template(node: Fields, catalog: Catalog) -> _NodeTemplate:
    node.check_keys(_NODE_KEYS, required=("devices",))
    devs = node.mapping("devices")
    if not devs.names():
        raise node.error(
            "devices", "expected at least one device kind, such as gpu: {model: h100-sxm5, count: 8}"
        )
    devices: list[tuple[str, DeviceSpec]] = []
    for kind in DEVICE_KINDS:
        if kind not in devs:
            continue
        entry = devs.mapping(kind)
        entry.check_keys(_NODE_DEVICE_KEYS, required=("model",))
        spec = catalog.device_spec(entry.raw("model"), where=entry, key="model")
        if spec.kind != kind:
            raise entry.error(
                "model", f"expected a {kind} device, got {spec.model!r}, which is a {spec.kind}"
            )
        count = entry.int("count", 1, minimum=1, maximum=VERTICES_PER_NODE)
        VERTICES_PER_NODE.check(len(devices) + count, file=entry.file("count"), field=entry.field("count"))
        devices += [(f"{kind}{i}", spec) for i in range(count)]
    for key in devs.names():
        if key not in DEVICE_KINDS:
            raise devs.error(key, f"unknown device kind; expected one of: {', '.join(DEVICE_KINDS)}")
    names = {n for n, _ in devices}
    switches: list[str] = []
    for i, pattern in enumerate(node.list("switches", [])):
        for s in _expand_declared(pattern, node, f"switches[{i}]"):
            if s in names or s in switches or _DEVICE_NAME.match(s):
                raise node.error(
                    f"switches[{i}]",
                    f"expected a new vertex name, got {s!r}, which is already used "
                    f"(devices are named gpu0, cpu0, pim0...)",
                )
            switches.append(s)
    VERTICES_PER_NODE.check(len(devices) + len(switches), file=node.file("switches"),
                            field=node.field("switches"))
    return _NodeTemplate(tuple(devices), tuple(switches))


def _expand_declared(pattern: object, where: Fields, key: str) -> list[str]:
    """A declared vertex name, possibly ``nic[0-7]`` for several."""
    m = _PATTERN.match(pattern) if isinstance(pattern, str) else None
    if not m or m.group("star"):
        raise where.error(key, f"expected a vertex name such as 'nvswitch' or 'nic[0-7]', got {pattern!r}")
    return _expand(m, [], where, key)


def _expand(m: re.Match[str], known: list[str], where: Fields, key: str) -> list[str]:
    stem = m.group("stem")
    if m.group("star"):
        return [v for v in known if re.fullmatch(re.escape(stem) + r"\d+", v)]
    if m.group("range") is None:
        return [stem]
    out: list[str] = []
    for part in m.group("range").replace(" ", "").split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise where.error(
                key, f"expected an index range such as [0-7] or [0,2,4], got [{m.group('range')}]"
            )
        VERTICES_PER_NODE.check(len(out) + int(hi or lo) - int(lo) + 1, file=where.file(key),
                                field=where.field(key))
        out += [f"{stem}{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _resolve_end(
    pattern: object, local: list[str], fabric: list[str], where: Fields, key: str, allow_fabric: bool
) -> tuple[list[str], bool]:
    """Vertex names a link end names, and whether they are fabric (shared) vertices."""
    m = _PATTERN.match(pattern) if isinstance(pattern, str) else None
    if not m:
        raise where.error(
            key,
            f"expected a vertex name or pattern such as 'gpu[0-7]', 'gpu*' or 'nvswitch', got {pattern!r}",
        )
    if allow_fabric and pattern in fabric:
        return [pattern], True
    names = _expand(m, local, where, key)
    unknown = [n for n in names if n not in local]
    if not names or unknown:
        known = _summarize(local) + (f"; fabric: {', '.join(fabric)}" if allow_fabric and fabric else "")
        raise where.error(key, f"unknown vertex {(unknown or [pattern])[0]!r}; expected one of: {known}")
    return names, False


def _summarize(names: list[str]) -> str:
    groups: dict[str, list[int]] = {}
    plain: list[str] = []
    for n in names:
        m = re.fullmatch(r"(.*?)(\d+)", n)
        if m:
            groups.setdefault(m.group(1), []).append(int(m.group(2)))
        else:
            plain.append(n)
    parts = [f"{s}{ix[0]}" if len(ix) == 1 else f"{s}[{min(ix)}-{max(ix)}]" for s, ix in groups.items()]
    return ", ".join(parts + plain) or "none"


def _pairs(a: list[str], b: list[str], where: Fields) -> list[tuple[str, str]]:
    if len(a) == 1 or len(b) == 1:
        return [(x, y) for x in a for y in b]
    if len(a) == len(b):
        return list(zip(a, b, strict=True))
    raise where.error(
        "to", f"expected as many vertices as 'from' names ({len(a)}) or a single one, got {len(b)}"
    )


def _link_uses(
    section: Fields, local: list[str], fabric: list[str], catalog: Catalog, allow_fabric: bool
) -> list[tuple[str, bool, str, bool, LinkSpec, str]]:
    """(src, src_is_fabric, dst, dst_is_fabric, spec, host_memory) for each link a ``links:`` list
    describes (``host_memory``: whether host<->GPU copies over it use pinned or pageable buffers)."""
    out = []
    for use in section.list_of_mappings("links", []):
        use.check_keys(_LINK_USE_KEYS, required=("link",))
        spec = catalog.link_spec(use.raw("link"), where=use, key="link")
        host = use.str("host_memory", "pinned", choices=("pinned", "pageable"))
        if "mesh" in use:
            if "from" in use or "to" in use:
                raise use.error("mesh", "expected either mesh: or from:/to:, not both")
            names, fab = _resolve_end(use.raw("mesh"), local, fabric, use, "mesh", False)
            out += [(a, fab, b, fab, spec, host) for i, a in enumerate(names) for b in names[i + 1 :]]
            continue
        src, src_fab = _resolve_end(use.raw("from"), local, fabric, use, "from", allow_fabric)
        dst, dst_fab = _resolve_end(use.raw("to"), local, fabric, use, "to", allow_fabric)
        for a, b in _pairs(src, dst, use):
            if a == b and src_fab == dst_fab:
                raise use.error("to", f"expected two different vertices, got {a!r} at both ends")
            out.append((a, src_fab, b, dst_fab, spec, host))
    return out


def _build(name: str, nodes: int, top: Fields, catalog: Catalog, file: str) -> Cluster:
    node = top.mapping("node")
    template = _node_template(node, catalog)
    local = [n for n, _ in template.devices] + list(template.switches)
    fabric_f = top.mapping("fabric", {})
    fabric_f.check_keys(_FABRIC_KEYS)
    fabric: list[str] = []
    for i, pattern in enumerate(fabric_f.list("switches", [])):
        for s in _expand_declared(pattern, fabric_f, f"switches[{i}]"):
            if s in local or s in fabric:
                raise fabric_f.error(f"switches[{i}]", f"expected a name not used inside a node, got {s!r}")
            fabric.append(s)
    node_links = _link_uses(node, local, fabric, catalog, allow_fabric=False)
    fabric_links = _link_uses(fabric_f, local, fabric, catalog, allow_fabric=True)
    CLUSTER_LINKS.check((len(node_links) + len(fabric_links)) * nodes, file=file, field="node.links")

    devices = tuple(Device(f"n{k}.{v}", k, spec) for k in range(nodes) for v, spec in template.devices)
    switches = tuple(f"n{k}.{s}" for k in range(nodes) for s in template.switches) + tuple(fabric)
    links: list[Link] = []
    seen: dict[frozenset[str], str] = {}

    def add(src: str, dst: str, spec: LinkSpec, section: Fields, host: str) -> None:
        pair = frozenset((src, dst))
        if pair in seen:
            raise section.error(
                "links", f"expected one link per pair of vertices, got two between {src} and {dst}"
            )
        seen[pair] = spec.kind
        links.append(Link(src, dst, spec, "pageable" if host == "pageable" else "pinned"))

    for k in range(nodes):
        for a, _, b, _, spec, host in node_links:
            add(f"n{k}.{a}", f"n{k}.{b}", spec, node, host)
    for k in range(nodes):
        for a, a_fab, b, b_fab, spec, host in fabric_links:
            if a_fab and b_fab:
                if k == 0:
                    add(a, b, spec, fabric_f, host)
                continue
            add(a if a_fab else f"n{k}.{a}", b if b_fab else f"n{k}.{b}", spec, fabric_f, host)

    cluster = Cluster(
        name=name, nodes=nodes, devices=devices, switches=switches, links=tuple(links), source_file=file
    )
    _check_connected(cluster, top, nodes)
    return cluster


def _check_connected(cluster: Cluster, top: Fields, nodes: int) -> None:
    g = cluster.graph
    parts = list(nx.connected_components(g))
    if len(parts) <= 1:
        return
    device_ids = [d.id for d in cluster.devices]
    first = next(p for p in parts if device_ids[0] in p)
    stranded = next((d for d in device_ids if d not in first), None)
    if stranded is None:  # only switches are isolated (e.g. an unused NIC); devices all reach each other
        return
    where = (
        "fabric" if nodes > 1 and cluster.device(stranded).node != cluster.devices[0].node else "node.links"
    )
    hint = (
        " (several nodes need a fabric: with links from each node to a shared switch)"
        if where == "fabric"
        else ""
    )
    raise top.error(
        where,
        f"expected a connected topology, got a graph in {len(parts)} parts: "
        f"{stranded} cannot reach {device_ids[0]}{hint}",
    )


def validate_file(path: str | Path, *, nodes: int | None = None) -> str:
    """Check one hardware file completely; returns a one-line summary (UserError when it is wrong)."""
    doc = load_document("hardware", path)
    top = doc.fields
    kind = top.str("kind", choices=("cluster", "catalog"))
    if kind == "cluster":
        cluster = load_cluster(path, nodes=nodes)
        counts = ", ".join(f"{len(cluster.devices_of(k))} {k}" for k in DEVICE_KINDS if cluster.devices_of(k))
        extra = validate_catalog(top, Catalog.for_document(doc))
        own = len(extra["devices"]) + len(extra["links"])
        return f"cluster {cluster.name}: {cluster.nodes} node(s), {counts}, {len(cluster.links)} links" + (
            f"; {own} own catalog entries" if own else ""
        )
    top.check_keys(_CATALOG_KEYS, required=("source",))
    top.str("source")
    found = validate_catalog(top, Catalog.for_document(doc))
    if not found["devices"] and not found["links"]:
        raise top.error(None, "expected a catalog with devices: or links: entries, got neither")
    return f"catalog: {len(found['devices'])} devices, {len(found['links'])} links"


def load_device_spec(name: str, catalog: str | Path | None = None) -> DeviceSpec:
    """A device entry by name from ``catalog`` (a hardware file) or the built-in device catalog."""
    doc = load_document("hardware", catalog if catalog is not None else "devices")
    cat = Catalog.for_document(doc)
    where = Fields({"device": name}, "", {}, "")  # a name given in code: no file to point at
    return cat.device_spec(name, where=where, key="device")


def profile_info(path: Path) -> dict[str, Any]:
    """Name, kind and description of one hardware file, for ``moesim hw list``."""
    doc = load_document("hardware", path)
    top = doc.fields
    info = {
        "name": path.stem,
        "kind": top.str("kind", choices=("cluster", "catalog")),
        "description": str(top.data.get("description", "")).strip(),
        "path": str(path),
    }
    if info["kind"] == "cluster":
        info["nodes"] = top.int("nodes", 1, minimum=1)
    return info


def builtin_profiles() -> list[Path]:
    """The built-in hardware files, cluster profiles and catalogs, by name."""
    folder = builtin_dir("hardware")
    names = sorted(builtin_names("hardware") + builtin_names("catalog"))
    return [folder / f"{n}.yaml" for n in names if (folder / f"{n}.yaml").exists()]
