"""The Plan: where each expert lives and what is cached; read and written as YAML/JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import yaml

from moesim.errors import UserError
from moesim.io import atomic_write_text
from moesim.limits import EXPERTS
from moesim.memory import resident_expert_bytes, resident_expert_counts
from moesim.plans.ep_groups import check_groups, read_expert_tp
from moesim.safe_yaml import read_yaml_file
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.vocab import CachePolicy, MissMode, Prefetch, parse

SCHEMA = "moesim-plan/v1"


@dataclass(frozen=True)
class CachePlan:
    """Offloading: a per-MoE-layer expert cache in GPU memory and what happens on a miss."""

    policy: CachePolicy = CachePolicy.NONE
    capacity_experts: tuple[int, ...] = ()
    """Cache size in experts, one per MoE layer (empty when ``policy == "none"``)."""
    resident: tuple[tuple[int, ...], ...] = ()
    """``static`` only: the logical experts pinned in GPU memory, per MoE layer."""
    miss: MissMode = MissMode.FETCH
    prefetch: Prefetch = Prefetch.NONE
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Planners and flags may pass the plain words; keep members so comparisons and dumps agree.
        object.__setattr__(self, "policy", parse(CachePolicy, self.policy, field="cache.policy"))
        object.__setattr__(self, "miss", parse(MissMode, self.miss, field="cache.miss"))
        object.__setattr__(self, "prefetch", parse(Prefetch, self.prefetch, field="cache.prefetch"))


@dataclass(frozen=True)
class Plan:
    """Placement of expert replicas on devices, per MoE layer, plus offloading and provenance.

    ``placement[l, g, s]`` is the logical expert in slot ``s`` of device ``devices[g]`` at MoE layer
    row ``l`` (model layer ``moe_layers[l]``); ``-1`` marks an unused slot. With ``expert_tp`` > 1 the
    devices form EP groups of ``expert_tp`` consecutive GPUs with identical rows, each GPU holding
    1/expert_tp of every expert of its row (:mod:`moesim.plans.ep_groups`).
    """

    planner: str
    model: str
    devices: tuple[str, ...]
    moe_layers: tuple[int, ...]
    num_experts: int
    placement: np.ndarray
    cache: CachePlan | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    solve_s: float | None = None
    predicted: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    expert_tp: int = 1
    """GPUs each expert is sharded over (``--ep`` = GPUs / expert_tp EP groups); 1: whole experts."""

    @property
    def slots_per_device(self) -> int:
        return int(self.placement.shape[2])

    @property
    def num_slots(self) -> int:
        return int(self.placement.shape[1] * self.placement.shape[2])

    def replica_counts(self) -> np.ndarray:
        """``[layers, experts]`` number of replicas of each logical expert."""
        L = self.placement.shape[0]
        counts = np.zeros((L, self.num_experts), dtype=np.int64)
        flat = self.placement.reshape(L, -1)
        for layer in range(L):
            ids = flat[layer][flat[layer] >= 0]
            counts[layer] = np.bincount(ids, minlength=self.num_experts)
        return counts

    def device_load(self, load: np.ndarray) -> np.ndarray:
        """``[layers, devices]`` tokens per device for ``load[layers, experts]``, replicas split evenly."""
        load = np.asarray(load, dtype=np.float64)
        counts = self.replica_counts()
        per_replica = np.divide(load, counts, out=np.zeros_like(load), where=counts > 0)
        L, _G, _S = self.placement.shape
        rows = np.arange(L)[:, None, None]
        gathered = np.where(self.placement >= 0, per_replica[rows, np.maximum(self.placement, 0)], 0.0)
        return gathered.sum(axis=2)

    def imbalance(self, load: np.ndarray) -> np.ndarray:
        """Per layer max-device load / mean-device load (1.0 = perfect; 1.0 for an empty layer)."""
        dev = self.device_load(load)
        mean = dev.mean(axis=1)
        return np.divide(dev.max(axis=1), mean, out=np.ones_like(mean), where=mean > 0)

    def validate(self, model: MoEModel, cluster: Cluster | None = None, *, file: str | None = None) -> None:
        """Raise :class:`UserError` unless the plan is valid for ``model`` (and fits ``cluster``)."""
        L, G, _S = self.placement.shape
        if self.num_experts != model.num_experts:
            raise UserError(
                f"expected {model.num_experts} experts for {model.name}, got {self.num_experts}",
                file=file,
                field="num_experts",
            )
        if tuple(self.moe_layers) != tuple(model.moe_layers) or model.num_moe_layers != L:
            raise UserError(
                f"expected the {model.num_moe_layers} MoE layers of {model.name}, got {len(self.moe_layers)}",
                file=file,
                field="moe_layers",
            )
        if len(self.devices) != G:
            raise UserError(
                f"expected {len(self.devices)} device rows, got {G}", file=file, field="placement"
            )
        if self.placement.min(initial=0) < -1 or self.placement.max(initial=0) >= self.num_experts:
            raise UserError(
                f"expert ids must lie in [-1, {self.num_experts})", file=file, field="placement"
            )
        counts = self.replica_counts()
        srt = np.sort(self.placement, axis=2)  # a device holding an expert twice has it in adjacent slots
        twice = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
        missing_layers = np.flatnonzero((counts == 0).any(axis=1))
        twice_layers = np.flatnonzero(twice.any(axis=(1, 2)))
        if missing_layers.size and (not twice_layers.size or missing_layers[0] <= twice_layers[0]):
            layer = int(missing_layers[0])
            raise UserError(
                f"layer {self.moe_layers[layer]}: expert {int(np.flatnonzero(counts[layer] == 0)[0])} has no "
                "replica (every logical expert needs at least one)",
                file=file,
                field="placement",
            )
        if twice_layers.size:
            layer, g, s = (int(x) for x in np.argwhere(twice)[0])
            raise UserError(
                f"layer {self.moe_layers[layer]}: device {self.devices[g]} holds two copies of "
                f"expert {int(srt[layer, g, s])}",
                file=file,
                field="placement",
            )
        check_groups(self, model, file)
        if self.cache is not None:
            self._validate_cache(model, file)
        if cluster is not None:
            self.check_memory(model, cluster, file=file)

    def _validate_cache(self, model: MoEModel, file: str | None) -> None:
        cache, L = self.cache, len(self.moe_layers)
        assert cache is not None
        if cache.policy == "none":
            return
        if cache.policy == "static":
            if len(cache.resident) != L:
                raise UserError(f"expected one resident list per MoE layer ({L}), got {len(cache.resident)}",
                                file=file, field="cache.resident")
            for i, ids in enumerate(cache.resident):
                if any(not 0 <= e < self.num_experts for e in ids) or len(set(ids)) != len(ids):
                    raise UserError(
                        f"layer {self.moe_layers[i]}: expected distinct expert ids "
                        f"in [0, {self.num_experts})",
                        file=file, field=f"cache.resident[{i}]")
            return
        if len(cache.capacity_experts) != L:
            raise UserError(f"expected one cache size per MoE layer ({L}), got {len(cache.capacity_experts)}",
                            file=file, field="cache.capacity_experts")
        small = [c for c in cache.capacity_experts if not model.top_k <= c <= self.num_experts]
        if small:
            raise UserError(
                f"a {cache.policy} cache must hold between top-k ({model.top_k}) and {self.num_experts} "
                f"experts, got {small[0]}", file=file, field="cache.capacity_experts")

    def resident_experts(self) -> dict[str, int]:
        """Routed experts each device keeps resident (:func:`moesim.memory.resident_expert_counts`):
        its used slots, or with a cache the cache's slots of every MoE layer, on every GPU."""
        return resident_expert_counts(self.placement, self.devices, self.cache)

    def resident_expert_bytes(self, model: MoEModel) -> dict[str, float]:
        """Expert weight bytes each device keeps resident (:meth:`resident_experts` x expert bytes)."""
        return resident_expert_bytes(model, self.placement, self.devices, self.cache, self.expert_tp)

    def check_memory(self, model: MoEModel, cluster: Cluster, *, reserved_bytes: float = 0.0,
                     file: str | None = None) -> None:
        """Raise :class:`UserError` naming device, need and capacity when the experts do not fit."""
        for device_id, need in self.resident_expert_bytes(model).items():
            try:
                capacity = cluster.device(device_id).spec.memory_bytes
            except KeyError:
                raise UserError(f"no device {device_id!r} in cluster {cluster.name}", file=file,
                                field="devices") from None
            if need + reserved_bytes > capacity:
                cached = self.cache is not None and self.cache.policy != "none"
                what = "its expert cache" if cached else "expert weights"
                hint = (
                    "; cache fewer experts, use a smaller batch or a smaller --weight-dtype"
                    if cached
                    else "; use more devices or fewer slots"
                )
                other = f" + {reserved_bytes / 1e9:.2f} GB KV cache and activations" if reserved_bytes else ""
                raise UserError(
                    f"device {device_id} needs {(need + reserved_bytes) / 1e9:.2f} GB "
                    f"({need / 1e9:.2f} GB for {what}, {model.expert_bytes() / 1e6:.1f} MB per "
                    f"{model.weight_dtype} expert{other}) "
                    f"but has {capacity / 1e9:.2f} GB{hint}",
                    file=file,
                    field="cache.capacity_experts" if cached else "placement",
                )

    # ---- files -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": SCHEMA,
            "planner": self.planner,
            "model": self.model,
            "devices": list(self.devices),
            "num_experts": int(self.num_experts),
            "slots_per_device": self.slots_per_device,
            "resident_experts": self.resident_experts(),
            "layers": [
                {"layer": int(layer), "slots": self.placement[i].astype(int).tolist()}
                for i, layer in enumerate(self.moe_layers)
            ],
            "params": _plain(dict(self.params)),
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "solve_s": self.solve_s,
            "predicted": _plain(dict(self.predicted)),
        }
        if self.expert_tp > 1:  # absent: whole experts (plans written before EP groups)
            d["ep"] = len(self.devices) // self.expert_tp
            d["expert_tp"] = self.expert_tp
        if self.cache is not None:
            d["cache"] = {
                "policy": str(self.cache.policy),
                "capacity_experts": list(self.cache.capacity_experts),
                "resident": [list(r) for r in self.cache.resident],
                "miss": str(self.cache.miss),
                "prefetch": str(self.cache.prefetch),
                "params": _plain(dict(self.cache.params)),
            }
        return d

    def save(self, path: str | Path) -> None:
        """Write YAML (``.yaml``/``.yml``) or JSON (anything else), atomically."""
        path = Path(path)
        d = self.to_dict()
        if path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=200)
        else:
            text = json.dumps(d, indent=1) + "\n"
        atomic_write_text(path, text)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, file: str | None = None) -> Plan:
        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in d:
                raise UserError("missing field", file=file, field=key)
            if not isinstance(d[key], kind) or isinstance(d[key], bool):
                what = getattr(kind, "__name__", kind)
                raise UserError(f"expected {what}, got {d[key]!r}", file=file, field=key)
            return d[key]

        if not isinstance(d, Mapping):
            raise UserError("expected a mapping at the top level", file=file)
        if d.get("schema", SCHEMA) != SCHEMA:
            raise UserError(f"expected schema {SCHEMA!r}, got {d.get('schema')!r}", file=file, field="schema")
        layers = need("layers", list)
        devices = tuple(str(x) for x in need("devices", list))
        slots = need("slots_per_device", int)
        num_experts = EXPERTS.check(need("num_experts", int), file=file, field="num_experts")
        rows, layer_ids = [], []
        for i, entry in enumerate(layers):
            if not isinstance(entry, Mapping) or "layer" not in entry or "slots" not in entry:
                raise UserError("expected {layer: int, slots: [[int]]}", file=file, field=f"layers[{i}]")
            layer_ids.append(_whole(entry["layer"], file, f"layers[{i}].layer"))
            rows.append(_id_grid(entry["slots"], (len(devices), slots), file, f"layers[{i}].slots"))
        placement = np.stack(rows) if rows else np.zeros((0, len(devices), slots), np.int32)
        _check_legacy_execution(d.get("execution"), file)
        cache = None
        if d.get("cache") is not None:
            c = d["cache"]
            if not isinstance(c, Mapping):
                raise UserError(f"expected a mapping (policy, capacity_experts, ...), got {c!r}", file=file,
                                field="cache")
            capacity = _list(c.get("capacity_experts", []), file, "cache.capacity_experts")
            resident = _list(c.get("resident", []), file, "cache.resident")
            cache = CachePlan(
                policy=parse(CachePolicy, c.get("policy", "none"), field="cache.policy", file=file),
                capacity_experts=tuple(
                    _whole(x, file, f"cache.capacity_experts[{i}]") for i, x in enumerate(capacity)
                ),
                resident=tuple(_resident(r, file, f"cache.resident[{i}]") for i, r in enumerate(resident)),
                miss=parse(MissMode, c.get("miss", "fetch"), field="cache.miss", file=file),
                prefetch=parse(Prefetch, c.get("prefetch", "none"), field="cache.prefetch", file=file),
                params=MappingProxyType(_mapping(c.get("params"), file, "cache.params")),
            )
        plan = cls(
            planner=str(need("planner", str)),
            model=str(need("model", str)),
            devices=devices,
            moe_layers=tuple(layer_ids),
            num_experts=num_experts,
            placement=placement,
            cache=cache,
            params=MappingProxyType(_mapping(d.get("params"), file, "params")),
            objective=_number(d.get("objective"), file, "objective"),
            bound=_number(d.get("bound"), file, "bound"),
            gap=_number(d.get("gap"), file, "gap"),
            solve_s=_number(d.get("solve_s"), file, "solve_s"),
            predicted=MappingProxyType(_mapping(d.get("predicted"), file, "predicted")),
            expert_tp=read_expert_tp(d, len(devices), file),
        )
        stated = d.get("resident_experts")
        if stated is not None and stated != plan.resident_experts():
            # derived from layers and cache; a file whose statement disagrees was edited by hand
            raise UserError(f"expected {plan.resident_experts()} (what layers and cache keep resident per "
                            f"device), got {stated!r}", file=file, field="resident_experts")
        return plan

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan file (YAML or JSON, which YAML reads too); one-line UserError for any flaw."""
        path = Path(path)
        return cls.from_dict(read_yaml_file(path), file=str(path))


def _whole(value: Any, file: str | None, field_name: str) -> int:
    """A whole number (a layer, an expert id, a cache size) within int32."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise UserError(f"expected a whole number, got {value!r}", file=file, field=field_name)
    return value


def _resident(value: Any, file: str | None, field_name: str) -> tuple[int, ...]:
    return tuple(_whole(x, file, field_name) for x in _list(value, file, field_name))


def _list(value: Any, file: str | None, field_name: str) -> list[Any]:
    if not isinstance(value, list):
        raise UserError(f"expected a list, got {value!r}", file=file, field=field_name)
    return value


def _mapping(value: Any, file: str | None, field_name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"expected a mapping, got {value!r}", file=file, field=field_name)
    return dict(value)


def _number(value: Any, file: str | None, field_name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"expected a number or null, got {value!r}", file=file, field=field_name)
    return value


def _id_grid(value: Any, shape: tuple[int, int], file: str | None, field_name: str) -> np.ndarray:
    """``shape`` lists of expert ids (-1 = empty slot) as int32, every entry checked before the cast."""
    rows = value if isinstance(value, list) else []
    if not (isinstance(value, list) and len(value) == shape[0]
            and all(isinstance(r, list) and len(r) == shape[1] for r in rows)):
        got = [len(r) if isinstance(r, list) else r for r in rows] if isinstance(value, list) else value
        raise UserError(f"expected {shape[0]} lists of {shape[1]} integers, got {str(got)[:60]}", file=file,
                        field=field_name)
    for r in rows:
        for x in r:
            if isinstance(x, bool) or not isinstance(x, int) or not -1 <= x < 2**31:
                raise UserError(f"expected {shape[0]} lists of {shape[1]} integers (expert ids, -1 = empty), "
                                f"got {x!r}", file=file, field=field_name)
    return np.array(rows, dtype=np.int32).reshape(shape)


def _check_legacy_execution(execution: Any, file: str | None) -> None:
    """Old plan files may carry a per-expert ``execution`` table that nothing ever read: an all-``gpu``
    one (what every expert did anyway) is ignored; anything else is refused rather than silently
    dropped, since misses run on the CPU or PIM only through ``cache.miss``."""
    if execution is None:
        return
    rows = execution if isinstance(execution, list) else [execution]
    if all(isinstance(r, list) and all(x == "gpu" for x in r) for r in rows):
        return
    raise UserError("per-expert execution is not supported (every resident expert runs on its GPU); "
                    "remove the field and set cache.miss: cpu or pim to run missed experts there",
                    file=file, field="execution")


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays (and vocabulary members) to plain Python, for YAML/JSON."""
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
