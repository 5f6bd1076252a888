"""Re-balancing policies: when the simulator asks the inner planner for a new placement, and on what load.

A policy is consulted at check steps (every ``interval_steps`` steps) with the :class:`LoadHistory`
of the steps already run, and answers with the load windows to plan for (``[W, L, E]``, what
:class:`moesim.planners.PlanRequest` takes) and why, or ``None``. It never sees a step that has not
run (the history refuses it). The engines re-balance on a fixed period over a window of recent passes:
SGLang every ``--eplb-rebalance-num-iterations`` forward passes (default 1000) on its recorder's
buffer (``--expert-distribution-recorder-buffer-size``, default: the same 1000), and vLLM every
``step_interval`` steps (default 3000) on the last ``window_size`` (default 1000) steps
(docs/replan.md cites the sources) — ``periodic`` here.

A new policy is one :class:`ReplanPolicy` subclass plus one entry in :data:`POLICIES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.sim.replan_history import LoadHistory
from moesim.vocab import Replan


@dataclass(frozen=True)
class ReplanSettings:
    """A policy's parameters (docs/replan.md)."""

    interval_steps: int = 1000
    """Steps between checks (SGLang's ``--eplb-rebalance-num-iterations`` default)."""
    window_steps: int = 1000
    """Past steps a plan is made on (SGLang's recorder buffer, vLLM's ``window_size``)."""
    threshold: float = 0.1
    """``drift``: re-plan when the total variation of the load shares, recent window vs the window the
    active plan was made on, averaged over layers, reaches this (0..1)."""
    hedge_windows: int = 4
    """``hedged``: the window is cut into this many consecutive windows, planned for together."""

    def check(self) -> None:
        for name, value in (("--replan-interval", self.interval_steps),
                            ("--replan-window", self.window_steps), ("--hedge-windows", self.hedge_windows)):
            if int(value) < 1:
                raise UserError(f"expected at least 1, got {value}", field=name)
        if not 0.0 < float(self.threshold) <= 1.0:
            raise UserError(f"expected a total variation in (0, 1], got {self.threshold}",
                            field="--replan-threshold")


@dataclass(frozen=True)
class ReplanAsk:
    """What a policy asks the inner planner for."""

    load: np.ndarray
    """``[W, L, E]`` token counts of the windows to plan for."""
    reason: str
    """Why, in a few words (``periodic``, ``drift: tv 0.21 >= 0.1``...)."""


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation ``0.5 * sum_e |p_a(e) - p_b(e)|`` between the load shares of ``a`` and ``b``
    (``[L, E]`` counts), averaged over the layers that have load in both (NaN if none)."""
    sa, sb = np.asarray(a, np.float64).sum(axis=1), np.asarray(b, np.float64).sum(axis=1)
    ok = (sa > 0) & (sb > 0)
    if not ok.any():
        return float("nan")
    pa, pb = a[ok] / sa[ok, None], b[ok] / sb[ok, None]
    return float((0.5 * np.abs(pa - pb).sum(axis=1)).mean())


class ReplanPolicy(ABC):
    """Decides, at check steps, whether and on what load to re-plan."""

    consulted = True
    """False: never asked (the engine then never splits chunks for it)."""

    def __init__(self, settings: ReplanSettings, initial_load: np.ndarray | None = None):
        self.settings = settings
        self.reference = None if initial_load is None else np.asarray(initial_load, np.float64)
        """``[L, E]`` load the active plan was made on (None: unknown)."""

    @property
    def history_steps(self) -> int:
        """Past steps the policy reads at most."""
        return self.settings.window_steps

    def next_check(self, step: int) -> int:
        """The first check step after ``step`` (checks at every multiple of the interval)."""
        n = self.settings.interval_steps
        return (step // n + 1) * n

    def window(self, step: int) -> tuple[int, int]:
        """The steps a plan at ``step`` is made on."""
        return max(0, step - self.settings.window_steps), step

    @abstractmethod
    def decide(self, step: int, history: LoadHistory) -> ReplanAsk | None:
        """At check ``step`` (steps before it have run): the load to plan for, or None."""

    def adopted(self, ask: ReplanAsk) -> None:
        """The plan made for ``ask`` is about to serve (what ``drift`` measures movement against)."""
        self.reference = np.asarray(ask.load, np.float64).sum(axis=0)


class Static(ReplanPolicy):
    """``static``: the initial plan serves the whole run."""

    consulted = False

    def decide(self, step: int, history: LoadHistory) -> ReplanAsk | None:
        return None


class Periodic(ReplanPolicy):
    """``periodic``: at every check, plan on the last ``window_steps`` steps (the engines' EPLB)."""

    def decide(self, step: int, history: LoadHistory) -> ReplanAsk | None:
        load = history.total(*self.window(step))
        return ReplanAsk(load[None], "periodic") if load.sum() > 0 else None


class Drift(ReplanPolicy):
    """``drift``: at a check, re-plan on the last ``window_steps`` steps when their load shares have
    moved at least ``threshold`` (total variation, mean over layers) from those the active plan was
    made on. With no such load (a plan not made on observed traffic) the first window becomes the
    reference and nothing is re-planned."""

    def decide(self, step: int, history: LoadHistory) -> ReplanAsk | None:
        load = history.total(*self.window(step))
        if load.sum() == 0:
            return None
        if self.reference is None:
            self.reference = load.astype(np.float64)
            return None
        tv = total_variation(load, self.reference)
        if not tv >= self.settings.threshold:  # NaN (nothing comparable) never triggers
            return None
        return ReplanAsk(load[None], f"drift: tv {tv:.3f} >= {self.settings.threshold:g}")


class Hedged(ReplanPolicy):
    """``hedged``: once, at the first check, one plan for the last ``window_steps`` steps cut into
    ``hedge_windows`` windows (the planner minimises the worst of them: the ILP's ``objective: worst``;
    planners that read only the total plan on the sum), then it stays: a static plan hedged over
    recent traffic."""

    def __init__(self, settings: ReplanSettings, initial_load: np.ndarray | None = None):
        super().__init__(settings, initial_load)
        self.done = False

    def next_check(self, step: int) -> int:
        return super().next_check(step) if not self.done else np.iinfo(np.int64).max

    def decide(self, step: int, history: LoadHistory) -> ReplanAsk | None:
        if self.done:
            return None
        load = history.windows(*self.window(step), self.settings.hedge_windows)
        if load.sum() == 0:
            return None
        self.done = True
        return ReplanAsk(load, f"hedged: {load.shape[0]} windows")


POLICIES: dict[Replan, type[ReplanPolicy]] = {
    Replan.STATIC: Static,
    Replan.PERIODIC: Periodic,
    Replan.DRIFT: Drift,
    Replan.HEDGED: Hedged,
}


def make_policy(name: Replan | str, settings: ReplanSettings,
                initial_load: np.ndarray | None = None) -> ReplanPolicy:
    """The policy called ``name``."""
    from moesim.vocab import parse

    return POLICIES[parse(Replan, name, field="--replan")](settings, initial_load)
