"""Device and link catalogs: named datasheet entries in YAML, turned into DeviceSpec / LinkSpec.

A catalog is any hardware file's ``devices:`` and ``links:`` mappings. A cluster profile looks a
name up in its own entries first, then in the catalogs it lists under ``catalogs:``, then in the
built-in catalogs ``hardware/devices.yaml`` and ``hardware/links.yaml``. An entry may
``extends:`` another entry of the same catalog chain and override some of its fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from moesim.errors import UserError
from moesim.resources import CATALOGS, resolve
from moesim.specs.cpu_kernels import parse_kernels
from moesim.specs.hardware import CpuKernelSpec, DeviceSpec, LinkSpec
from moesim.specs.yaml_fields import (
    Document,
    Fields,
    check_fraction,
    deep_merge,
    load_document,
    resolve_reference,
)
from moesim.units import parse_physical

DEVICE_KINDS = ("gpu", "cpu", "pim")
# dtypes a peak FLOP/s may be given for (DeviceSpec.peak_flops falls back between them).
PEAK_DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "mxfp4", "int4")
_VERIFIED = re.compile(r"^[RIPDU](?:[ ,/+]*[RIPDU])*$")

_DEVICE_KEYS = frozenset(
    {
        "kind",
        "description",
        "extends",
        "memory",
        "compute",
        "overheads",
        "efficiency_curves",
        "kernels",
        "source",
        "verified",
        "estimated",
        "notes",
    }
)
_MEMORY_KEYS = frozenset(
    {"capacity", "bandwidth", "internal_bandwidth", "memcpy_bandwidth", "efficiency", "source", "verified",
     "estimated", "notes"}
)
_COMPUTE_KEYS = frozenset({"peak", "efficiency", "source", "verified", "estimated", "notes"})
_OVERHEAD_KEYS = frozenset({"launch", "source", "verified", "estimated", "notes"})
_CURVE_KEYS = frozenset({"compute", "memory", "source", "verified", "estimated", "notes"})
_LINK_KEYS = frozenset(
    {
        "description",
        "extends",
        "bandwidth",
        "latency",
        "efficiency",
        "source",
        "verified",
        "estimated",
        "notes",
    }
)


@dataclass(frozen=True)
class Entry:
    """One catalog entry, not yet parsed: where it lives and what it says."""

    name: str
    fields: Fields


class Catalog:
    """Device and link entries visible from one profile, in lookup order."""

    def __init__(self, scopes: list[Fields]):
        self.scopes = scopes  # each is a whole document's top-level Fields

    @classmethod
    def for_document(cls, doc: Document, *, builtin: bool = True) -> Catalog:
        """The profile itself, then its ``catalogs:``, then the built-in catalogs."""
        top = doc.fields
        scopes = [top]
        seen = {doc.path.resolve()}
        for i, ref in enumerate(top.list("catalogs", [])):
            path = resolve_reference(
                "hardware",
                ref,
                relative_to=doc.path.parent,
                file=top.file("catalogs"),
                field=f"catalogs[{i}]",
            )
            if path.resolve() not in seen:
                seen.add(path.resolve())
                scopes.append(_catalog_fields(path))
        if builtin:
            for name in CATALOGS:
                path = resolve("catalog", name)
                if path.resolve() not in seen:
                    seen.add(path.resolve())
                    scopes.append(_catalog_fields(path))
        return cls(scopes)

    def names(self, section: str) -> list[str]:
        out: list[str] = []
        for scope in self.scopes:
            if section in scope:
                out += [n for n in scope.mapping(section).names() if n not in out]
        return out

    def find(self, section: str, name: str, *, skip: Fields | None = None) -> Entry | None:
        for scope in self.scopes:
            if section in scope:
                entries = scope.mapping(section)
                if name in entries and (
                    skip is None or entries.field(name) != skip.field() or entries.file(name) != skip.file()
                ):
                    return Entry(name, entries.mapping(name))
        return None

    def lookup(self, section: str, name: object, *, where: Fields, key: str) -> Entry:
        """The entry called ``name``; a UserError at ``where.key`` naming what exists otherwise."""
        what = "device" if section == "devices" else "link"
        if not isinstance(name, str):
            raise where.error(key, f"expected the name of a {what}, got {name!r}")
        entry = self.find(section, name)
        if entry is None:
            known = ", ".join(self.names(section)) or "none"
            raise where.error(key, f"unknown {what} {name!r}; expected one of: {known}")
        return entry

    def merged(self, section: str, entry: Entry, _depth: int = 0) -> Fields:
        """The entry with the entry it ``extends`` merged underneath."""
        f = entry.fields
        parent_name = f.data.get("extends")
        if parent_name is None:
            return f
        if _depth > 16:
            raise f.error("extends", "expected a chain of entries without a loop")
        parent_entry = self.find(section, parent_name, skip=f) if isinstance(parent_name, str) else None
        if parent_entry is None:
            self.lookup(section, parent_name, where=f, key="extends")  # raises with the list of names
            raise f.error("extends", f"expected another entry than {parent_name!r} itself")
        parent = self.merged(section, parent_entry, _depth + 1)
        own = {k: v for k, v in f.data.items() if k != "extends"}
        base_origins = _rebased(parent, f.path)
        own = _own_provenance(parent.data, own)
        data, origins = deep_merge(parent.data, own, base_origins, f.file(), f.path)
        # Keys the child did not set keep the parent's file; the child's own keys its file.
        return Fields(data, f.path, {**f.origins, **origins}, f.default_file)

    def device_spec(self, name: str, *, where: Fields, key: str) -> DeviceSpec:
        entry = self.lookup("devices", name, where=where, key=key)
        return parse_device(entry.name, self.merged("devices", entry))

    def link_spec(self, name: object, *, where: Fields, key: str) -> LinkSpec:
        entry = self.lookup("links", name, where=where, key=key)
        return parse_link(entry.name, self.merged("links", entry))


def _own_provenance(parent: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """Where the child gives a section a new ``source``, the parent's verified/estimated tags do not apply."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in own.items()}  # never edit the loaded YAML
    sections = [(parent, out)] + [(parent.get(k), v) for k, v in out.items() if isinstance(v, dict)]
    for base, mine in sections:  # the entry itself and each of its sections
        if isinstance(base, dict) and "source" in mine:
            for tag in ("verified", "estimated"):
                if tag in base and tag not in mine:
                    mine[tag] = None  # deep_merge deletes it
    return out


def _rebased(parent: Fields, new_path: str) -> dict[str, str]:
    """The parent's origins moved under ``new_path`` (its fields now live at the child's path)."""
    out = {new_path: parent.file()}
    for p, file in parent.origins.items():
        if p.startswith(parent.path + ".") or p.startswith(parent.path + "["):
            out[new_path + p[len(parent.path) :]] = file
    return out


def _catalog_fields(path: Path) -> Fields:
    doc = load_document("hardware", path)
    top = doc.fields
    kind = top.str("kind", choices=("catalog", "cluster"))
    del kind  # a cluster file's own devices and links may serve as a catalog too
    return top


def _provenance(section: Fields) -> str:
    """The section's ``source`` text, tagged with its ``verified`` marker and estimate flag."""
    source = section.str("source")
    tags = []
    if "verified" in section:
        marker = section.str("verified")
        if not _VERIFIED.match(marker):
            raise section.error(
                "verified", f"expected markers from R, I, P, D, U (such as 'P' or 'D,U'), got {marker!r}"
            )
        tags.append(f"verified: {marker}")
    if section.bool("estimated", False):
        tags.append("estimated")
    return f"{source} [{'; '.join(tags)}]" if tags else source


def parse_device(name: str, f: Fields) -> DeviceSpec:
    """A device entry (already merged with what it extends) -> DeviceSpec."""
    f.check_keys(_DEVICE_KEYS, required=("kind", "memory", "compute", "source"))
    kind = f.str("kind", choices=DEVICE_KINDS)
    sources = {"device": _provenance(f)}

    mem = f.mapping("memory")
    mem.check_keys(_MEMORY_KEYS, required=("capacity", "bandwidth", "source"))
    capacity = mem.quantity("capacity", "memory")
    bandwidth = mem.quantity("bandwidth", "bandwidth")
    internal: float | None = None
    if kind == "pim":
        internal = mem.quantity("internal_bandwidth", "bandwidth")
    elif "internal_bandwidth" in mem:
        raise mem.error("internal_bandwidth", f"expected only on a pim device, this one is a {kind}")
    memcpy: float | None = None
    if "memcpy_bandwidth" in mem:
        if kind != "cpu":
            raise mem.error("memcpy_bandwidth", f"expected only on a cpu device, this one is a {kind}")
        memcpy = mem.quantity("memcpy_bandwidth", "bandwidth")
        if memcpy <= 0:
            raise mem.error("memcpy_bandwidth", "expected a bandwidth greater than zero")
    sources["memory"] = _provenance(mem)

    comp = f.mapping("compute")
    comp.check_keys(_COMPUTE_KEYS, required=("peak", "source"))
    peak_fields = comp.mapping("peak")
    if not peak_fields.names():
        raise comp.error(
            "peak",
            f"expected at least one dtype, such as bf16: '989.4 TFLOP/s' (dtypes: {', '.join(PEAK_DTYPES)})",
        )
    peak: dict[str, float] = {}
    for dtype in peak_fields.names():
        if dtype not in PEAK_DTYPES:
            raise peak_fields.error(dtype, f"unknown dtype; expected one of: {', '.join(PEAK_DTYPES)}")
        peak[dtype] = peak_fields.quantity(dtype, "compute")
    sources["compute"] = _provenance(comp)

    launch = 0.0
    if "overheads" in f:
        ov = f.mapping("overheads")
        ov.check_keys(_OVERHEAD_KEYS, required=("source",))
        launch = ov.quantity("launch", "overhead", 0.0)
        sources["overheads"] = _provenance(ov)

    curves: dict[str, tuple[tuple[float, float], ...]] = {}
    if "efficiency_curves" in f:
        cf = f.mapping("efficiency_curves")
        cf.check_keys(_CURVE_KEYS, required=("source",))
        for curve, size_kind in (("compute", "work"), ("memory", "size")):
            if curve in cf:
                curves[curve] = _parse_curve(cf, curve, size_kind)
        sources["efficiency_curves"] = _provenance(cf)

    kernels: dict[str, CpuKernelSpec] = {}
    if "kernels" in f:
        if kind != "cpu":
            raise f.error("kernels", f"expected only on a cpu device, this one is a {kind}")
        kernels, sources["kernels"] = parse_kernels(f.mapping("kernels"), _provenance)

    estimated = any(s.bool("estimated", False) for s in (f, mem, comp))
    return DeviceSpec(
        model=name,
        kind=kind,  # type: ignore[arg-type]
        memory_bytes=capacity,
        memory_bandwidth_bytes_per_s=bandwidth,
        peak_flops_per_s=MappingProxyType(peak),
        memory_efficiency=mem.fraction("efficiency", 0.85),
        compute_efficiency=comp.fraction("efficiency", 0.7),
        efficiency_curves=MappingProxyType(curves),
        launch_overhead_s=launch,
        internal_bandwidth_bytes_per_s=internal,
        cpu_kernels=MappingProxyType(kernels),
        memcpy_bandwidth_bytes_per_s=memcpy,
        estimated=estimated,
        sources=MappingProxyType(sources),
    )


def _parse_curve(cf: Fields, curve: str, kind: str) -> tuple[tuple[float, float], ...]:
    points: list[tuple[float, float]] = []
    field = cf.field(curve)
    example = "['1 GFLOP', 0.3]" if kind == "work" else "['1 MiB', 0.4]"
    for i, point in enumerate(cf.list(curve)):
        where = f"{field}[{i}]"
        if not isinstance(point, list) or len(point) != 2:
            raise UserError(
                f"expected a pair [size, fraction] such as {example}, got {point!r}",
                file=cf.file(curve),
                field=where,
            )
        size = parse_physical(point[0], kind, file=cf.file(curve), field=f"{where}[0]")
        frac = check_fraction(
            point[1], lambda msg, w=where: UserError(msg, file=cf.file(curve), field=f"{w}[1]")
        )
        if points and size <= points[-1][0]:
            raise UserError("expected sizes in increasing order", file=cf.file(curve), field=f"{where}[0]")
        points.append((size, frac))
    if not points:
        raise cf.error(curve, f"expected at least one [size, fraction] point, such as {example}")
    return tuple(points)


def parse_link(name: str, f: Fields) -> LinkSpec:
    """A link entry -> LinkSpec (bandwidth per direction; the entry name is the link kind)."""
    f.check_keys(_LINK_KEYS, required=("bandwidth", "latency", "source"))
    return LinkSpec(
        kind=name,
        bandwidth_bytes_per_s=f.quantity("bandwidth", "bandwidth"),
        latency_s=f.quantity("latency", "latency"),
        efficiency=f.fraction("efficiency", 1.0),
        source=_provenance(f),
    )


def validate_catalog(top: Fields, catalog: Catalog) -> dict[str, Any]:
    """Parse every device and link entry of one file; returns counts for the report line."""
    devices = [
        catalog.device_spec(n, where=top.mapping("devices"), key=n)
        for n in top.mapping("devices", {}).names()
    ]
    links = [
        catalog.link_spec(n, where=top.mapping("links"), key=n) for n in top.mapping("links", {}).names()
    ]
    return {"devices": [d.model for d in devices], "links": [ln.kind for ln in links]}
