"""Re-placement workflows: the inner planner injected into the simulator, and ``--replan`` options.

The simulator never imports the planners (``tests/test_import_graph.py``); this layer builds the
callable it calls at each re-plan (:func:`inner_planner`: a window of loads in, a validated plan on the
run's GPUs and slots out) and the :class:`moesim.sim.replan.ReplanConfig` of a run from the
command line's options (:class:`ReplanOptions`). docs/replan.md describes every option.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.planners import PLANNERS, PlanRequest
from moesim.planners.sticky import keep_placement
from moesim.plans.plan import Plan
from moesim.sim.replan import ReplanConfig, Replanner
from moesim.sim.replan_policies import ReplanSettings
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.vocab import Migration, MigrationSource, Replan, parse

SGLANG_INTERVAL_STEPS = 1000
"""SGLang's ``--eplb-rebalance-num-iterations`` default (python/sglang/srt/server_args.py)."""
SGLANG_WINDOW_STEPS = 1000
"""SGLang's recorder buffer: ``--expert-distribution-recorder-buffer-size`` defaults to the interval."""
VLLM_INTERVAL_STEPS = 3000
"""vLLM's ``EPLBConfig.step_interval`` default (vllm/config/parallel.py)."""
VLLM_WINDOW_STEPS = 1000
"""vLLM's ``EPLBConfig.window_size`` default."""
MOVES = ("all", "min")
"""How much of a new plan's placement is taken: all of it, or its counts with as few moves as balance
allows."""
ILP_TARGETS = ("time", "tokens")
"""What the ILP minimises: predicted step time (``units: auto``) or token imbalance (``units: tokens``)."""


@dataclass(frozen=True)
class ReplanOptions:
    """``moesim simulate --replan POLICY ...`` (docs/replan.md)."""

    policy: str = "periodic"
    planner: str = "eplb"
    """The inner planner (any of ``moesim.planners.PLANNERS``)."""
    interval_steps: int = SGLANG_INTERVAL_STEPS
    window_steps: int = SGLANG_WINDOW_STEPS
    threshold: float = 0.1
    hedge_windows: int = 4
    migration: str = "blocking"
    source: str = "gpu"
    ilp_target: str = "time"
    """ILP as inner planner: ``time`` (predicted step time) or ``tokens`` (token balance)."""
    time_limit_s: float = 10.0
    """ILP wall-clock safety net per re-plan (its search is bounded by work, docs/planners.md)."""
    batch_tokens: int = 4096
    """Tokens per step the ILP predicts times for."""
    moves: str = "all"
    """``all``: the planner's placement as it is (what the engines do); ``min``: its replica counts,
    keeping every expert where the serving plan has it when that balances the window within 1% of the
    planner's own placement (``moesim.planners.sticky``)."""

    def check(self) -> None:
        parse(Replan, self.policy, field="--replan")
        parse(Migration, self.migration, field="--migration")
        parse(MigrationSource, self.source, field="--migration-source")
        if self.planner not in PLANNERS:
            raise UserError(f"expected a planner among {', '.join(PLANNERS)}, got {self.planner!r}",
                            field="--replan-planner")
        if self.ilp_target not in ILP_TARGETS:
            raise UserError(f"expected one of {', '.join(ILP_TARGETS)}, got {self.ilp_target!r}",
                            field="--ilp-target")
        if self.moves not in MOVES:
            raise UserError(f"expected one of {', '.join(MOVES)}, got {self.moves!r}", field="--replan-moves")
        self.settings().check()

    def settings(self) -> ReplanSettings:
        return ReplanSettings(interval_steps=int(self.interval_steps), window_steps=int(self.window_steps),
                              threshold=float(self.threshold), hedge_windows=int(self.hedge_windows))


def inner_planner(name: str, model: MoEModel, cluster: Cluster, devices: tuple[str, ...], slots: int, *,
                  cost: Any = None, seed: int = 0, time_limit_s: float = 10.0,
                  params: dict[str, Any] | None = None, moves: str = "all") -> Replanner:
    """The callable the simulator re-plans with: (``[W, L, E]`` loads, the serving plan) -> planner
    ``name``'s validated plan on ``devices`` x ``slots`` (``params``: the planner's options, e.g. the
    ILP's ``units``; ``moves``: see :class:`ReplanOptions`)."""
    if name not in PLANNERS:
        raise UserError(f"expected a planner among {', '.join(PLANNERS)}, got {name!r}",
                        field="--replan-planner")
    planner = PLANNERS[name]
    frozen = MappingProxyType(dict(params or {}))

    def replan(load: np.ndarray, serving: Plan | None = None) -> Plan:
        req = PlanRequest(model=model, cluster=cluster, devices=devices, slots_per_device=slots,
                          load=np.asarray(load, dtype=np.float64), cost=cost, time_limit_s=time_limit_s,
                          seed=seed, params=frozen)
        plan = planner(req)
        if moves == "min" and serving is not None and serving.placement.shape == plan.placement.shape:
            plan = replace(plan, placement=keep_placement(serving, plan, req.total_load()),
                           params=MappingProxyType({**plan.params, "moves": "min"}))
        plan.validate(model)
        return plan

    return replan


def replan_config(options: ReplanOptions, plan: Plan, model: MoEModel, cluster: Cluster, cost: Any, *,
                  seed: int = 0, initial_load: np.ndarray | None = None) -> ReplanConfig:
    """The :class:`ReplanConfig` of ``options`` for a run starting from ``plan``."""
    options.check()
    params = {"objective": "worst", "batch_tokens": options.batch_tokens,
              "units": "tokens" if options.ilp_target == "tokens" else "auto"}
    planner = inner_planner(options.planner, model, cluster, tuple(plan.devices), plan.slots_per_device,
                            cost=cost, seed=seed, time_limit_s=options.time_limit_s, params=params,
                            moves=options.moves)
    return ReplanConfig(policy=options.policy, planner=planner, planner_name=options.planner,
                        settings=options.settings(), migration=options.migration, source=options.source,
                        initial_load=initial_load)
