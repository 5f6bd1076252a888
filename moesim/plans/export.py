"""Export a Plan to the expert-placement files serving engines load, and read them back.

- SGLang ``--init-expert-location FILE.json``: ``{"physical_to_logical_map": [[int] * P] * R}``
  with ``R = model.num_layers`` (SGLang's ``num_hidden_layers``: dense layers get the trivial row
  ``p % E``) and ``P = devices * slots_per_device``; physical slot ``p`` lives on EP rank
  ``p // slots_per_device`` (sgl-project/sglang python/sglang/srt/eplb/expert_location.py @01fec5c2,
  ``compute_initial_expert_location_metadata``, ``init_by_mapping``).
- SGLang ``{"logical_count": [[int] * E] * R}``: loads instead of a placement; SGLang runs its own
  EPLB on them at start-up (``ExpertLocationMetadata.init_by_eplb``).
- vLLM-Ascend ``expert_map_path``: ``{"moe_layer_count": L, "layer_list": [{"layer_id": i,
  "device_count": G, "device_list": [{"device_id": g, "device_expert": [int] * S}]}]}`` with one
  entry per MoE layer in order (vllm-project/vllm-ascend @182b75ea ``vllm_ascend/eplb/core/eplb_utils.py``,
  ``expert_file_to_tensor``; the older ``vllm_ascend/ops/expert_load_balancer.py`` is gone).

EP rank ``g`` is ``plan.devices[g]``. Plans the engines cannot load (moesim.plans.engines: model
families, EP size) are refused with :class:`UserError` before anything is written. ``export_*``
also write the launch flags beside the file (``<file>.flags.txt``) and return them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.io import atomic_write_text
from moesim.plans import engines, ep_groups
from moesim.plans.engines import EngineLaunch
from moesim.plans.plan import Plan
from moesim.specs.model import MoEModel

SGLANG_KEY = "physical_to_logical_map"
SGLANG_COUNTS_KEY = "logical_count"


# ---- checks shared by both writers ---------------------------------------------------------------


def _check_common(plan: Plan, model: MoEModel, engine: str, path: str) -> None:
    """The plan matches the model, fills every slot and gives every expert a replica."""
    L, G, S = plan.placement.shape
    if plan.num_experts != model.num_experts:
        raise UserError(
            f"{engine} export: plan has {plan.num_experts} experts, "
            f"model {model.name} has {model.num_experts}",
            file=path, field="num_experts",
        )
    if tuple(plan.moe_layers) != tuple(model.moe_layers):
        raise UserError(
            f"{engine} export: expected the {model.num_moe_layers} MoE layers of {model.name}, "
            f"plan has {L}", file=path, field="moe_layers",
        )
    if G == 0 or S == 0:
        raise UserError(f"{engine} export: expected at least one device and one slot, got {G} x {S}",
                        file=path, field="placement")
    if plan.placement.max(initial=0) >= plan.num_experts or plan.placement.min(initial=0) < -1:
        raise UserError(f"{engine} export: expert ids must lie in [0, {plan.num_experts})",
                        file=path, field="placement")
    empty = np.argwhere(plan.placement < 0)
    if empty.size:
        layer, g, s = (int(x) for x in empty[0])
        used = (plan.placement >= 0).sum(axis=2)
        detail = (
            "unequal slots per device " f"({used[layer].min()}..{used[layer].max()} used)"
            if used[layer].min() != used[layer].max() else "an unused slot"
        )
        raise UserError(
            f"{engine} export: layer {plan.moe_layers[layer]}: device {plan.devices[g]} slot {s} is empty "
            f"({detail}); {engine} needs every physical slot mapped to a logical expert and the same "
            "number of slots on every device",
            file=path, field="placement",
        )
    counts = plan.replica_counts()
    missing = np.argwhere(counts == 0)
    if missing.size:
        layer, e = (int(x) for x in missing[0])
        raise UserError(
            f"{engine} export: layer {plan.moe_layers[layer]}: expert {e} has no replica "
            "(every logical expert needs at least one)", file=path, field="placement",
        )


def _check_no_duplicates(plan: Plan, engine: str, path: str) -> None:
    L, G, _S = plan.placement.shape
    for layer in range(L):
        for g in range(G):
            ids = plan.placement[layer, g]
            uniq, cnt = np.unique(ids, return_counts=True)
            if (cnt > 1).any():
                raise UserError(
                    f"{engine} export: layer {plan.moe_layers[layer]}: device {plan.devices[g]} holds "
                    f"expert {int(uniq[np.argmax(cnt)])} twice ({engine} keeps one index per expert "
                    "and device, so the second copy would be lost)",
                    file=path, field="placement",
                )


# ---- SGLang --------------------------------------------------------------------------------------


def sglang_map(plan: Plan, model: MoEModel, *, path: str = "<sglang>") -> list[list[int]]:
    """``physical_to_logical_map`` rows for every model layer (dense layers: trivial ``p % E``)."""
    engines.check_family(model, "SGLang", path)
    _check_common(plan, model, "SGLang", path)
    _L, G, S = plan.placement.shape
    num_physical = G * S
    trivial = (np.arange(num_physical) % model.num_experts).tolist()
    row_of = {layer: i for i, layer in enumerate(plan.moe_layers)}
    rows: list[list[int]] = []
    for layer in range(model.num_layers):
        i = row_of.get(layer)
        rows.append(trivial if i is None else plan.placement[i].reshape(-1).astype(int).tolist())
    return rows


def write_sglang(plan: Plan, model: MoEModel, path: str | Path, *, ep_size: int | None = None) -> None:
    """Write SGLang's ``--init-expert-location`` JSON (launch with ``--ep-num-redundant-experts
    G*S - E`` and an EP size of ``G``; ``ep_size``, when given, must be ``G``). A plan over EP groups
    (``expert_tp`` > 1) is written per group: EP rank j is group j (:func:`ep_groups.collapse`)."""
    plan = ep_groups.collapse(plan)
    engines.check_ep_size(plan, "SGLang", ep_size, str(path))
    rows = sglang_map(plan, model, path=str(path))
    atomic_write_text(path, _dump_rows({SGLANG_KEY: rows}))


def export_sglang(plan: Plan, model: MoEModel, path: str | Path, *, ep_size: int | None = None,
                  dispatch: str | None = None) -> EngineLaunch:
    """Write the map and ``<path>.flags.txt``; the launch flags (``dispatch``: moesim's even/local)."""
    write_sglang(plan, model, path, ep_size=ep_size)
    launch = engines.sglang_launch(ep_groups.collapse(plan), model, path, dispatch=dispatch,
                                   tp_size=len(plan.devices))
    engines.write_flags(launch, path)
    return launch


def sglang_logical_count(load: np.ndarray, model: MoEModel, *, path: str = "<sglang>") -> list[Any]:
    """``logical_count`` rows for every model layer from a load ``[L, E]`` or ``[W, L, E]`` over the
    model's MoE layers (in model order); dense layers get zero counts (SGLang never reads them)."""
    engines.check_family(model, "SGLang", path)
    a = np.asarray(load)
    if a.ndim not in (2, 3) or a.shape[-2:] != (model.num_moe_layers, model.num_experts):
        raise UserError(f"expected a load [layers, experts] = [{model.num_moe_layers}, {model.num_experts}] "
                        f"(or with a leading window axis), got {list(a.shape)}", file=path, field="load")
    if a.size and (a.min() < 0 or not np.all(a == np.round(a))):
        raise UserError("expected non-negative integer counts", file=path, field="load")
    full = np.zeros((*a.shape[:-2], model.num_layers, model.num_experts), np.int64)
    full[..., list(model.moe_layers), :] = a.astype(np.int64)
    return full.tolist()


def export_sglang_logical_count(load: np.ndarray, model: MoEModel, path: str | Path, *,
                                ep_size: int | None = None, redundant: int = 0) -> EngineLaunch:
    """Write ``{"logical_count": ...}`` (SGLang runs its own EPLB on it) and its flags file."""
    if redundant < 0:
        raise UserError(f"expected redundant experts >= 0, got {redundant}", field="--redundant-experts")
    launch = engines.sglang_counts_launch(model, path, ep_size=ep_size, redundant=redundant)
    rows = sglang_logical_count(load, model, path=str(path))
    text = (_dump_rows({SGLANG_COUNTS_KEY: rows}) if np.ndim(rows) == 2
            else json.dumps({SGLANG_COUNTS_KEY: rows}, separators=(",", ":")) + "\n")
    atomic_write_text(path, text)
    engines.write_flags(launch, path)
    return launch


def read_sglang(path: str | Path, model: MoEModel, devices: Sequence[str] | int) -> Plan:
    """Read a ``physical_to_logical_map`` JSON (or ``.pt``) file as a Plan over ``devices`` (EP ranks)."""
    file = str(path)
    data = _read_mapping(path)
    if SGLANG_KEY not in data:
        found = ", ".join(sorted(map(str, data))) or "nothing"
        hint = " (a logical_count file holds loads, not a placement)" if "logical_count" in data else ""
        raise UserError(f"expected key {SGLANG_KEY!r}, found {found}{hint}", file=file, field=SGLANG_KEY)
    arr = _int_matrix(data[SGLANG_KEY], file, SGLANG_KEY)
    devs = _device_names(devices)
    if arr.shape[0] != model.num_layers:
        raise UserError(
            f"expected {model.num_layers} rows (num_hidden_layers of {model.name}), got {arr.shape[0]}",
            file=file, field=SGLANG_KEY,
        )
    if arr.shape[1] % len(devs):
        raise UserError(
            f"expected the {arr.shape[1]} physical slots to divide evenly over {len(devs)} devices",
            file=file, field=SGLANG_KEY,
        )
    placement = arr[list(model.moe_layers)].reshape(model.num_moe_layers, len(devs), -1)
    return _plan_from(placement, model, devs, "sglang", file, SGLANG_KEY)


# ---- vLLM-Ascend ---------------------------------------------------------------------------------


def vllm_ascend_map(plan: Plan, model: MoEModel, *, path: str = "<vllm-ascend>") -> dict[str, Any]:
    """The expert-map dict vLLM-Ascend's ``expert_file_to_tensor`` reads (``expert_map_path``)."""
    engines.check_family(model, "vLLM-Ascend", path)
    _check_common(plan, model, "vLLM-Ascend", path)
    _check_no_duplicates(plan, "vLLM-Ascend", path)
    L, G, _S = plan.placement.shape
    return {
        "moe_layer_count": L,
        "layer_list": [
            {
                "layer_id": i,
                "device_count": G,
                "device_list": [
                    {"device_id": g, "device_expert": plan.placement[i, g].astype(int).tolist()}
                    for g in range(G)
                ],
            }
            for i in range(L)
        ],
    }


def write_vllm_ascend(plan: Plan, model: MoEModel, path: str | Path, *, ep_size: int | None = None) -> None:
    """Write vLLM-Ascend's static expert map (``additional_config.eplb_config.expert_map_path``); a
    plan over EP groups is refused (:func:`ep_groups.refuse_export`)."""
    ep_groups.refuse_export(plan, "vLLM-Ascend", str(path))
    engines.check_ep_size(plan, "vLLM-Ascend", ep_size, str(path))
    d = vllm_ascend_map(plan, model, path=str(path))
    atomic_write_text(path, json.dumps(d, separators=(",", ":")) + "\n")


def export_vllm_ascend(plan: Plan, model: MoEModel, path: str | Path, *,
                       ep_size: int | None = None) -> EngineLaunch:
    """Write the expert map and ``<path>.flags.txt``; the launch flags and environment."""
    write_vllm_ascend(plan, model, path, ep_size=ep_size)
    launch = engines.vllm_ascend_launch(plan, model, path)
    engines.write_flags(launch, path)
    return launch


def export_for_engines(plan: Plan, model: MoEModel, *, sglang: str | Path | None = None,
                       vllm_ascend: str | Path | None = None, ep_size: int | None = None,
                       dispatch: str | None = None) -> list[EngineLaunch]:
    """Every requested engine file with its flags file, all checked before the first is written."""
    for target, engine in ((sglang, "SGLang"), (vllm_ascend, "vLLM-Ascend")):
        if target is not None:
            if engine != "SGLang":
                ep_groups.refuse_export(plan, engine, str(target))
            engines.check_ep_size(ep_groups.collapse(plan), engine, ep_size, str(target))
            engines.check_family(model, engine, str(target))
    launches = []
    if sglang is not None:
        launches.append(export_sglang(plan, model, sglang, ep_size=ep_size, dispatch=dispatch))
    if vllm_ascend is not None:
        launches.append(export_vllm_ascend(plan, model, vllm_ascend, ep_size=ep_size))
    return launches


def read_vllm_ascend(path: str | Path, model: MoEModel, devices: Sequence[str] | int | None = None) -> Plan:
    """Read a vLLM-Ascend expert map as a Plan (``devices`` default: ``dev0..dev{G-1}``)."""
    file = str(path)
    data = _read_mapping(path)
    for key in ("moe_layer_count", "layer_list"):
        if key not in data:
            raise UserError("missing field", file=file, field=key)
    count, layers = data["moe_layer_count"], data["layer_list"]
    if not isinstance(count, int) or count != model.num_moe_layers:
        raise UserError(f"expected {model.num_moe_layers} (MoE layers of {model.name}), got {count!r}",
                        file=file, field="moe_layer_count")
    if not isinstance(layers, list) or len(layers) != count:
        raise UserError(f"expected a list of {count} layers, got {_describe(layers)}", file=file,
                        field="layer_list")
    rows = []
    for i, entry in enumerate(layers):
        where = f"layer_list[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("device_list"), list):
            raise UserError("expected {layer_id, device_count, device_list: [...]}", file=file, field=where)
        if entry.get("layer_id", i) != i:
            raise UserError(f"expected layer_id {i} (layers in order), got {entry.get('layer_id')!r}",
                            file=file, field=f"{where}.layer_id")
        dl = entry["device_list"]
        if entry.get("device_count", len(dl)) != len(dl):
            raise UserError(f"device_count {entry.get('device_count')!r} but {len(dl)} devices listed",
                            file=file, field=f"{where}.device_count")
        by_id: dict[int, Any] = {}
        for j, dev in enumerate(dl):
            if not isinstance(dev, Mapping) or "device_expert" not in dev:
                raise UserError("expected {device_id, device_expert: [int]}", file=file,
                                field=f"{where}.device_list[{j}]")
            by_id[int(dev.get("device_id", j))] = dev["device_expert"]
        if sorted(by_id) != list(range(len(dl))):
            raise UserError(f"expected device ids 0..{len(dl) - 1}, got {sorted(by_id)}", file=file,
                            field=f"{where}.device_list")
        rows.append(_int_matrix([by_id[g] for g in range(len(dl))], file, f"{where}.device_list"))
    shapes = {r.shape for r in rows}
    if len(shapes) != 1:
        raise UserError(f"expected the same devices x slots in every layer, got {sorted(shapes)}", file=file,
                        field="layer_list")
    placement = np.stack(rows)
    G = placement.shape[1]
    devs = _device_names(devices if devices is not None else G)
    if len(devs) != G:
        raise UserError(f"expected {len(devs)} devices, got {G}", file=file, field="layer_list")
    plan = _plan_from(placement, model, devs, "vllm-ascend", file, "layer_list")
    _check_no_duplicates(plan, "vLLM-Ascend", file)
    return plan


# ---- helpers -------------------------------------------------------------------------------------


def _dump_rows(d: dict[str, list[list[int]]]) -> str:
    """Compact JSON with one matrix row per line (readable diffs, small files)."""
    parts = []
    for key, rows in d.items():
        body = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in rows)
        parts.append(f"{json.dumps(key)}: [\n  {body}\n ]")
    return "{" + ",\n".join(parts) + "}\n"


def _read_mapping(path: str | Path) -> Mapping[str, Any]:
    path = Path(path)
    try:
        if path.suffix == ".pt":
            try:
                import torch
            except ImportError:
                raise UserError("reading a .pt file needs PyTorch: pip install torch (or moesim[record])",
                                file=path) from None

            data: Any = torch.load(path, map_location="cpu", weights_only=True)
            data = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(data).items()}
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("no such file", file=path) from None
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"cannot read as {'a torch file' if path.suffix == '.pt' else 'JSON'}: {e}",
                        file=path) from None
    except Exception as e:  # torch's unpickler raises its own types for foreign objects
        raise UserError(f"cannot read as a torch file: {type(e).__name__}", file=path) from None
    if not isinstance(data, Mapping):
        raise UserError(f"expected a JSON object at the top level, got {_describe(data)}", file=path)
    return data


def _int_matrix(value: Any, file: str, field: str) -> np.ndarray:
    ok = isinstance(value, list) and value and all(isinstance(r, list) for r in value)
    if ok:
        widths = {len(r) for r in value}
        ok = len(widths) == 1 and all(
            isinstance(x, int) and not isinstance(x, bool) for r in value for x in r
        )
    if not ok:
        raise UserError(f"expected a non-empty list of equal-length integer lists, got {_describe(value)}",
                        file=file, field=field)
    return np.asarray(value, dtype=np.int64)


def _device_names(devices: Sequence[str] | int) -> tuple[str, ...]:
    if isinstance(devices, int):
        return tuple(f"dev{g}" for g in range(devices))
    return tuple(str(d) for d in devices)


def _plan_from(placement: np.ndarray, model: MoEModel, devices: tuple[str, ...], planner: str,
               file: str, field: str) -> Plan:
    if placement.min(initial=0) < 0 or placement.max(initial=0) >= model.num_experts:
        raise UserError(f"expected expert ids in [0, {model.num_experts})", file=file, field=field)
    plan = Plan(
        planner=planner,
        model=model.name,
        devices=devices,
        moe_layers=tuple(model.moe_layers),
        num_experts=model.num_experts,
        placement=placement.astype(np.int32),
        params=MappingProxyType({"imported_from": file}),
    )
    counts = plan.replica_counts()
    missing = np.argwhere(counts == 0)
    if missing.size:
        layer, e = (int(x) for x in missing[0])
        raise UserError(f"MoE layer {model.moe_layers[layer]}: expert {e} has no physical slot", file=file,
                        field=field)
    return plan


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
