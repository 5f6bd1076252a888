"""Online re-placement in the lockstep simulator: policy checks, the plan switch and its migration.

The engine asks :class:`Replanning` where a chunk of steps must end (the next check, so a plan
never changes inside a chunk), what plan serves the next chunk, and, while an overlapped copy is
in flight, how many steps of a freshly costed chunk run before the copy lands. At a check step
the policy (:mod:`moesim.sim.replan_policies`) reads the counts of the steps already run
(:class:`moesim.sim.replan_history.LoadHistory`); a new plan comes from the injected
``ReplanConfig.planner`` (the simulator never imports the planners), its GPUs are renumbered to
keep experts in place and the copies are priced (:mod:`moesim.sim.replan_migration`):

- ``blocking``: serving stops for ``copy_s`` before the check step, which runs on the new plan
  (the stall is that step's ``migration`` time);
- ``overlapped``: the copies use the links only while no all-to-all does — during each step's
  attention, router and expert compute (with ``--overlap``, attention and router only) — so they
  take ``copy_s`` of such idle time; the steps meanwhile run on the old plan, and the new one serves
  from the first step after the copy lands. No check happens while a copy is in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.plans.plan import Plan
from moesim.sim.replan_history import LoadHistory, step_counts
from moesim.sim.replan_migration import MigrationCost, align_devices, migration_cost
from moesim.sim.replan_policies import ReplanAsk, ReplanSettings, make_policy
from moesim.vocab import Migration, MigrationSource, Replan, parse

Replanner = Callable[[np.ndarray, Plan], Plan]
"""(``[W, L, E]`` token counts, the serving plan) -> a plan on the run's GPUs with its slots per GPU."""


@dataclass(frozen=True)
class ReplanConfig:
    """Online re-placement of one run (``moesim simulate --replan``; docs/replan.md)."""

    policy: Replan = Replan.STATIC
    planner: Replanner | None = None
    """The inner planner (``moesim.workflows.replan.inner_planner``); needed unless ``static``."""
    planner_name: str = ""
    """Its name, for the results."""
    settings: ReplanSettings = field(default_factory=ReplanSettings)
    migration: Migration = Migration.BLOCKING
    source: MigrationSource = MigrationSource.GPU
    initial_load: np.ndarray | None = None
    """``[L, E]`` load the initial plan was made on (``drift``'s first reference; None: unknown)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", parse(Replan, self.policy, field="--replan"))
        object.__setattr__(self, "migration", parse(Migration, self.migration, field="--migration"))
        object.__setattr__(self, "source", parse(MigrationSource, self.source, field="--migration-source"))

    def check(self) -> None:
        self.settings.check()
        if self.policy != Replan.STATIC and self.planner is None:
            raise UserError(f"re-balancing policy {self.policy} needs an inner planner",
                            field="--replan-planner")

    def describe(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {"policy": str(self.policy), "planner": self.planner_name or None,
                               "interval_steps": s.interval_steps, "window_steps": s.window_steps,
                               "migration": str(self.migration), "source": str(self.source)}
        if self.policy == Replan.DRIFT:
            out["threshold"] = s.threshold
        if self.policy == Replan.HEDGED:
            out["hedge_windows"] = s.hedge_windows
        return out


@dataclass(frozen=True)
class Rebalance:
    """One re-plan: when it was decided, why, what moved and what it cost."""

    step: int
    """The check step it was decided at (the steps before it are its history)."""
    reason: str
    effective_step: int | None
    """First step served by the new plan (None: the copy had not landed when the run ended)."""
    layers_changed: int
    experts_moved: int
    bytes: float
    copy_s: float
    """Seconds the copies need on idle links."""
    stall_s: float
    """Seconds serving stopped for them (``blocking``; 0 when overlapped)."""
    link_bytes: dict[tuple[str, str], float]

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "reason": self.reason, "effective_step": self.effective_step,
                "layers_changed": self.layers_changed, "experts_moved": self.experts_moved,
                "bytes": self.bytes, "copy_s": self.copy_s, "stall_s": self.stall_s}


@dataclass
class _Pending:
    """An overlapped copy in flight."""

    event: int
    """Index of its Rebalance."""
    plan: Plan
    left_s: float
    """Idle-link seconds it still needs."""


class Replanning:
    """The run's re-placement state: the serving plan, the policy, the history and the re-balances."""

    def __init__(self, cfg: ReplanConfig, plan: Plan, *, cost: Any, devices: tuple[str, ...],
                 node_of: np.ndarray, expert_bytes: float, num_steps: int, overlapped_moe: bool):
        cfg.check()
        self.cfg, self.cost, self.devices, self.node_of = cfg, cost, devices, node_of
        self.expert_bytes = expert_bytes
        self.num_steps = num_steps
        self.overlapped_moe = overlapped_moe
        self.plan = plan
        self.plan_index = 0
        """Plans that have served so far, less one (0: the initial plan)."""
        self.policy = make_policy(cfg.policy, cfg.settings, cfg.initial_load)
        L, _G, _S = plan.placement.shape
        self.history = LoadHistory(L, plan.num_experts, self.policy.history_steps)
        self.events: list[Rebalance] = []
        self.stalls: dict[int, float] = {}
        """Step -> seconds serving stops before it (blocking migrations)."""
        self.checks = 0
        self.pending: _Pending | None = None
        self._idle_per_step = 0.0
        """Mean link-idle seconds per step of the last chunk (sizes chunks while a copy is in flight)."""
        self._switch: tuple[int, Plan] | None = None

    # ------------------------------------------------------------------ engine hooks
    def boundary(self, step: int) -> int:
        """The step a chunk starting at ``step`` must end by (the next check)."""
        if self.pending is not None:  # about as many steps as the copy needs (the last steps' idle time)
            idle = self._idle_per_step
            guess = int(np.ceil(self.pending.left_s / idle)) + 1 if idle > 0 else 64
            return min(self.num_steps, step + max(1, guess))
        if not self.policy.consulted:
            return self.num_steps
        return min(self.num_steps, self.policy.next_check(step))

    def plan_for(self, step: int) -> Plan | None:
        """The new plan serving from ``step`` on, if it changes there (call once per chunk start)."""
        if self._switch is not None and self._switch[0] == step:
            plan = self._switch[1]
            self._switch = None
            return self._adopt(plan)
        if (self.policy.consulted and self.pending is None and step > 0
                and step % self.cfg.settings.interval_steps == 0):
            return self._check(step)
        return None

    def observe(self, first: int, ids: np.ndarray) -> None:
        """Steps ``first ..`` (ids ``[S, B, L, K]``) have been dispatched: the policy may read them."""
        self.history.append(first, step_counts(ids, self.plan.num_experts))

    def steps_before_landing(self, first: int, costs: Any) -> int:
        """Of a chunk costed from ``first`` (``ChunkCosts``), how many steps run before the new plan
        serves: all of them, unless the overlapped copy in flight lands during one of them."""
        S = costs.expert.shape[0]
        if self.pending is None and self.cfg.migration != Migration.OVERLAPPED:
            return S
        idle = self._idle_s(costs)
        self._idle_per_step = float(idle.mean()) if S else self._idle_per_step
        if self.pending is None:
            return S
        done = np.cumsum(idle) >= self.pending.left_s
        if not done.any():
            self.pending.left_s -= float(idle.sum())
            return S
        k = int(np.argmax(done)) + 1  # the copy lands during step first + k - 1
        self._land(first + k)
        return k

    # ------------------------------------------------------------------ internals
    def _idle_s(self, costs: Any) -> np.ndarray:
        """[S] seconds of each step the links spend without an all-to-all."""
        idle = costs.pre.max(axis=2).sum(axis=1)
        if not self.overlapped_moe:
            idle = idle + costs.expert.max(axis=2).sum(axis=1)
        return idle

    def _check(self, step: int) -> Plan | None:
        self.checks += 1
        ask = self.policy.decide(step, self.history)
        if ask is None:
            return None
        assert self.cfg.planner is not None
        new = self.cfg.planner(ask.load, self.plan)
        if new.placement.shape != self.plan.placement.shape:
            raise UserError(f"the inner planner returned {new.placement.shape[1]} GPUs x "
                            f"{new.placement.shape[2]} slots; the run has {self.plan.placement.shape[1]} x "
                            f"{self.plan.placement.shape[2]}", field="--replan-planner")
        placement = align_devices(self.plan.placement, new.placement, self.node_of)
        new = replace(new, placement=placement, devices=self.plan.devices, cache=self.plan.cache)
        move = migration_cost(self.plan.placement, placement, self.devices, self.cost, self.expert_bytes,
                              self.cfg.source)
        self.policy.adopted(ask)
        if self.cfg.migration == Migration.BLOCKING or move.copy_s == 0.0:
            stall = move.copy_s if self.cfg.migration == Migration.BLOCKING else 0.0
            self._event(step, ask, move, effective=step, stall=stall)
            if stall > 0:
                self.stalls[step] = stall
            return self._adopt(new)
        self._event(step, ask, move, effective=None, stall=0.0)
        self.pending = _Pending(len(self.events) - 1, new, move.copy_s)
        return None

    def _land(self, step: int) -> None:
        """The copy in flight lands before ``step``: the new plan serves from there."""
        assert self.pending is not None
        self.events[self.pending.event] = replace(self.events[self.pending.event], effective_step=step)
        self._switch = (step, self.pending.plan)
        self.pending = None

    def _event(self, step: int, ask: ReplanAsk, move: MigrationCost, *, effective: int | None,
               stall: float) -> None:
        self.events.append(Rebalance(step=step, reason=ask.reason, effective_step=effective,
                                     layers_changed=move.layers_changed, experts_moved=move.experts_moved,
                                     bytes=move.bytes, copy_s=move.copy_s, stall_s=stall,
                                     link_bytes=move.link_bytes))

    def _adopt(self, plan: Plan) -> Plan:
        self.plan = plan
        self.plan_index += 1
        return plan

    def info(self) -> dict[str, Any]:
        """The run summary's ``replan`` block (the per-step figures are added by the results). Totals
        count the re-plans that took effect; an overlapped copy still in flight when the run ends never
        served, so its bytes are ``in_flight_bytes`` (and its experts ``in_flight_experts``), apart."""
        done = [e for e in self.events if e.effective_step is not None]
        late = [e for e in self.events if e.effective_step is None]
        return {**self.cfg.describe(), "checks": self.checks,
                "rebalances": [e.as_dict() for e in self.events],
                "migration_bytes": float(sum(e.bytes for e in done)),
                "experts_moved": int(sum(e.experts_moved for e in done)),
                "stall_s": float(sum(e.stall_s for e in self.events)),
                "applied": len(done), "migration_link_bytes": self._link_bytes(done),
                "in_flight_bytes": float(sum(e.bytes for e in late)),
                "in_flight_experts": int(sum(e.experts_moved for e in late))}

    @staticmethod
    def _link_bytes(events: list[Rebalance]) -> list[dict[str, Any]]:
        """Bytes the applied copies put on each link direction, as ``per_link`` lists the all-to-alls'."""
        total: dict[tuple[str, str], float] = {}
        for e in events:
            for ln, b in e.link_bytes.items():
                total[ln] = total.get(ln, 0.0) + b
        return [{"src": a, "dst": b, "bytes": v} for (a, b), v in sorted(total.items())]
