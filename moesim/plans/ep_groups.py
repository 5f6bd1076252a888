"""Plans over EP groups: experts sharded over ``expert_tp`` GPUs (tensor parallelism inside experts).

A plan for ``--ep E`` on G GPUs keeps one placement row per GPU (``[layers, G, slots]``, so every
per-device reader works unchanged) and records ``expert_tp = G / E``: the GPUs form E groups of
``expert_tp`` consecutive devices (:mod:`moesim.parallel`), the rows of a group's GPUs are identical and
each GPU holds 1/expert_tp of each expert in its row. Planners place experts on the E groups as on E
devices (:func:`group_devices`: the first GPU of each group stands for it, with ``expert_tp`` times a
GPU's expert slots when memory sizes them) and :func:`expand` copies each group's row to its GPUs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol, TypeVar

import numpy as np

from moesim.errors import UserError
from moesim.specs.model import MoEModel


class Placed(Protocol):
    """What this module reads of a :class:`moesim.plans.plan.Plan` (which imports this module)."""

    @property
    def expert_tp(self) -> int: ...
    @property
    def devices(self) -> tuple[str, ...]: ...
    @property
    def placement(self) -> np.ndarray: ...
    @property
    def moe_layers(self) -> tuple[int, ...]: ...


Plan = TypeVar("Plan", bound=Placed)


def group_devices(devices: tuple[str, ...], expert_tp: int) -> tuple[str, ...]:
    """The first GPU of each EP group: the "devices" planners place experts on."""
    return tuple(devices[::expert_tp])


def group_rows(placement: np.ndarray, expert_tp: int) -> np.ndarray:
    """``[layers, E, slots]`` one placement row per EP group."""
    return np.asarray(placement)[:, ::expert_tp]


def expand(plan: Plan, devices: tuple[str, ...], expert_tp: int) -> Plan:
    """``plan`` made over the groups' first GPUs (:func:`group_devices`) as a plan over all ``devices``:
    every GPU of a group gets its group's row, ``expert_tp`` recorded."""
    if expert_tp == 1:
        return plan
    if len(plan.devices) * expert_tp != len(devices):
        raise ValueError(f"a plan over {len(plan.devices)} groups does not expand to {len(devices)} GPUs")
    return replace(plan, devices=tuple(devices), expert_tp=expert_tp,
                   placement=np.repeat(np.asarray(plan.placement), expert_tp, axis=1))


def collapse(plan: Plan) -> Plan:
    """The inverse of :func:`expand`: one device (its first GPU) and one row per EP group."""
    if plan.expert_tp == 1:
        return plan
    k = plan.expert_tp
    return replace(plan, devices=group_devices(tuple(plan.devices), k),
                   placement=group_rows(plan.placement, k), expert_tp=1)


def refuse_export(plan: Placed, engine: str, path: str) -> None:
    """One UserError for an engine that cannot shard experts inside EP groups (vLLM and its Ascend
    plugin: ``FusedMoEParallelConfig.make`` in ``vllm/model_executor/layers/fused_moe/config.py``
    @002d607 runs the experts either expert-parallel over every GPU (``tp_size = 1``) or
    tensor-parallel over all of them (``ep_size = 1``), never both)."""
    if plan.expert_tp == 1:
        return
    G = len(plan.devices)
    raise UserError(f"{engine} export: the plan shards each expert over {plan.expert_tp} GPUs (--ep "
                    f"{G // plan.expert_tp} on {G}); vLLM runs experts either expert-parallel over every "
                    f"GPU or tensor-parallel over all of them, so plan with --ep {G}", file=path,
                    field="expert_tp")


def read_expert_tp(d: Any, num_devices: int, file: str | None) -> int:
    """``expert_tp`` of a plan file (absent: 1), checked against its device count and its ``ep``."""
    tp_e = d.get("expert_tp", 1)
    if isinstance(tp_e, bool) or not isinstance(tp_e, int) or tp_e < 1 or num_devices % tp_e:
        raise UserError(f"expected a whole number of GPUs per EP group dividing the {num_devices} devices, "
                        f"got {tp_e!r}", file=file, field="expert_tp")
    ep = d.get("ep", num_devices // tp_e)
    if ep != num_devices // tp_e:
        raise UserError(f"expected ep = devices / expert_tp = {num_devices // tp_e}, got {ep!r}", file=file,
                        field="ep")
    return tp_e


def check_groups(plan: Placed, model: MoEModel, file: str | None = None) -> None:
    """One UserError unless the GPUs of each EP group hold the same experts and ``expert_tp`` divides
    the devices and the expert FFN width."""
    k, G = plan.expert_tp, len(plan.devices)
    if k == 1:
        return
    if k < 1 or G % k:
        raise UserError(f"expected expert_tp to divide the {G} devices, got {k}", file=file,
                        field="expert_tp")
    if model.expert_intermediate_size % k:
        raise UserError(f"expert_tp {k} does not divide expert_intermediate_size "
                        f"({model.expert_intermediate_size}) of {model.name}", file=file, field="expert_tp")
    p = np.asarray(plan.placement)
    rows = p.reshape(p.shape[0], G // k, k, p.shape[2])
    differ = np.argwhere((rows != rows[:, :, :1]).any(axis=3))
    if differ.size:
        layer, group, pos = (int(x) for x in differ[0])
        raise UserError(f"layer {plan.moe_layers[layer]}: device {plan.devices[group * k + pos]} holds other "
                        f"experts than {plan.devices[group * k]}, the first GPU of its EP group of {k} "
                        "(the GPUs of a group hold shards of the same experts)", file=file, field="placement")
