"""The report's re-placement studies: one stream (a trace, or traces played in order so the subject
switches) served from an initial plan under ``static`` and re-balancing policies, blocking or overlapped.

A study in a sweep file::

    replan:
      - hw: h100x8
        model: deepseek-v2-lite
        trace: deepseek-v2-lite-switch      # or a list of traces, concatenated in order
        policies: [static, periodic, drift] # static, periodic, drift, hedged
        interval: 4                          # steps between checks
        window: 4                            # past steps each plan is made on (default: interval)
        threshold: 0.1                       # drift: total variation that triggers
        migration: [blocking, overlapped]
        planner: eplb                        # the inner planner
        batch_tokens: 1024
        train_fraction: 0.2                  # the initial plan's traffic; the rest is the stream

Each (policy, migration) is one cell: :func:`moesim.workflows.replan_stream.replay_stream` (one candidate
of ``moesim plan --replan``); ``static`` is one cell whatever the migration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.vocab import Migration, Replan, choices

STATIC = str(Replan.STATIC)


@dataclass(frozen=True)
class ReplanStudy:
    """Re-placement policies on one stream of one (hardware, model)."""

    hw: str
    model: str
    trace: tuple[str, ...]
    """Traces played one after the other (names or paths; one trace is a one-item tuple)."""
    policies: tuple[str, ...] = ("static", "periodic", "drift")
    interval: int = 8
    window: int | None = None
    """Past steps each plan is made on (None: the interval)."""
    threshold: float = 0.1
    hedge_windows: int = 4
    migration: tuple[str, ...] = ("blocking", "overlapped")
    planner: str = "eplb"
    moves: str = "all"
    batch_tokens: int = 4096
    train_fraction: float = 0.2
    slots_per_gpu: int | None = None
    nodes: int | None = None

    def series(self) -> list[tuple[str, str]]:
        """(policy, migration) of each row: ``static`` once, every other policy per migration."""
        return [(p, m) for p in self.policies
                for m in ((self.migration[0],) if p == STATIC else self.migration)]


def _trace_list(v: Any, file: str | None, fld: str, base: Path, path_or_name: Callable[..., str]) -> tuple:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise UserError(f"expected a trace or a non-empty list of traces, got {v!r}", file=file, field=fld)
    return tuple(path_or_name(x, file, f"{fld}[{i}]" if len(items) > 1 else fld, base)
                 for i, x in enumerate(items))


def parse_replan(d: Any, file: str | None, fld: str, base: Path,
                 path_or_name: Callable[..., str]) -> ReplanStudy:
    """A validated study from a sweep file's mapping; ``path_or_name`` reads names or paths relative to the
    file (``base``)."""
    from moesim.planners import PLANNERS
    from moesim.workflows.replan import MOVES

    def fail(msg: str, key: str) -> UserError:
        return UserError(msg, file=file, field=f"{fld}.{key}")

    if not isinstance(d, Mapping):
        raise UserError(f"expected a mapping, got {d!r}", file=file, field=fld)
    allowed = {f.name for f in fields(ReplanStudy)}
    for key in d:
        if key not in allowed:
            raise fail(f"unknown key; expected some of {', '.join(sorted(allowed))}", str(key))
    for key in ("hw", "model", "trace"):
        if key not in d:
            raise fail("missing field", key)
    kw: dict[str, Any] = {k: path_or_name(d[k], file, f"{fld}.{k}", base) for k in ("hw", "model")}
    kw["trace"] = _trace_list(d["trace"], file, f"{fld}.trace", base, path_or_name)
    for key, allowed_values in (("policies", choices(Replan)), ("migration", choices(Migration))):
        if key in d:
            v = [d[key]] if isinstance(d[key], str) else d[key]
            if not isinstance(v, list) or not v or any(x not in allowed_values for x in v) or \
                    len(set(v)) != len(v):
                raise fail(f"expected a list of distinct values among {', '.join(allowed_values)}, got "
                           f"{d[key]!r}", key)
            kw[key] = tuple(v)
    for key, allowed_values in (("planner", tuple(PLANNERS)), ("moves", MOVES)):
        if key in d:
            if d[key] not in allowed_values:
                raise fail(f"expected one of {', '.join(allowed_values)}, got {d[key]!r}", key)
            kw[key] = d[key]
    for key in ("interval", "window", "hedge_windows", "batch_tokens", "slots_per_gpu", "nodes"):
        if d.get(key) is not None:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise fail(f"expected an integer >= 1, got {v!r}", key)
            kw[key] = v
    for key, hi_open in (("threshold", False), ("train_fraction", True)):
        if key in d:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    0 < v < 1 if hi_open else 0 < v <= 1):
                raise fail(f"expected a number in (0, 1{')' if hi_open else ']'}, got {v!r}", key)
            kw[key] = float(v)
    return ReplanStudy(**kw)
