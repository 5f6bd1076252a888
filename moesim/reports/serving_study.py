"""The report's serving studies: latency-throughput curves of one (hardware, model, trace) over Poisson
arrival rates, for several expert placements (colocated) and for disaggregated prefill/decode.

A study in a sweep file::

    serving:
      - hw: h100x8
        model: deepseek-v2-lite
        trace: deepseek-v2-lite-synth
        workload: chat               # built-in name or YAML path (docs/serving.md)
        rates: [5, 10, 20, 40, 80]   # requests/s
        requests: 200
        placements: [contiguous, eplb]   # colocated, one curve each (moesim plan --planner)
        disaggregated: true              # and one curve of disaggregated serving (contiguous groups)
        slots_per_gpu: 9
        slo: ttft=100ms,tpot=10ms

Each point is one cell: :func:`moesim.workflows.serve_run` (what ``moesim simulate --workload`` runs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from moesim.errors import UserError

DISAGGREGATED = "disaggregated"
"""The series name of the disaggregated curve (placements are planner names)."""


@dataclass(frozen=True)
class ServingStudy:
    """Serving curves on one (hardware, model, trace)."""

    hw: str
    model: str
    trace: str
    workload: str = "chat"
    rates: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 80.0)
    """Poisson arrival rates, requests/s."""
    requests: int = 200
    placements: tuple[str, ...] = ("contiguous", "eplb")
    """Colocated curves, one per placement planner (``moesim plan --planner``)."""
    disaggregated: bool = True
    slots_per_gpu: int | None = None
    """Physical expert slots per GPU for the planners (None: the planner's default)."""
    train_fraction: float = 0.5
    """Planners see this leading fraction of the trace's tokens."""
    slo: str | None = None
    """Goodput objectives (``--slo``), e.g. ``ttft=100ms,tpot=10ms``."""
    nodes: int | None = None

    @property
    def series(self) -> tuple[str, ...]:
        return (*self.placements, *((DISAGGREGATED,) if self.disaggregated else ()))


def parse_serving(d: Any, file: str | None, fld: str, base: Path, inputs: Callable[..., dict[str, str]],
                  path_or_name: Callable[..., str]) -> ServingStudy:
    """A validated study from a sweep file's mapping; ``inputs`` and ``path_or_name`` are the sweep's
    readers of hw/model/trace and of names or paths relative to the file (``base``)."""
    from moesim.planners import PLANNERS
    from moesim.serving import parse_slo

    def fail(msg: str, key: str) -> UserError:
        return UserError(msg, file=file, field=f"{fld}.{key}")

    if not isinstance(d, Mapping):
        raise UserError(f"expected a mapping, got {d!r}", file=file, field=fld)
    workload = inputs(d, file, fld, base)
    allowed = {f.name for f in fields(ServingStudy)}
    for key in d:
        if key not in allowed:
            raise fail(f"unknown key; expected some of {', '.join(sorted(allowed))}", str(key))
    kw: dict[str, Any] = dict(workload)
    if "workload" in d:
        if not isinstance(d["workload"], str) or not d["workload"].strip():
            raise fail(f"expected a workload name or path, got {d['workload']!r}", "workload")
        kw["workload"] = path_or_name(d["workload"], file, f"{fld}.workload", base)
    if "rates" in d:
        rates = d["rates"]
        if not isinstance(rates, list) or not rates or any(
                isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0 for r in rates):
            raise fail(f"expected a non-empty list of rates > 0 (requests/s), got {rates!r}", "rates")
        kw["rates"] = tuple(sorted(float(r) for r in rates))
    for key, lo in (("requests", 1), ("slots_per_gpu", 1), ("nodes", 1)):
        if d.get(key) is not None:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise fail(f"expected an integer >= {lo}, got {v!r}", key)
            kw[key] = v
    if "placements" in d:
        p = d["placements"]
        if not isinstance(p, list) or any(x not in PLANNERS for x in p) or len(set(p)) != len(p):
            raise fail(f"expected a list of distinct planners among {', '.join(PLANNERS)}, got {p!r}",
                       "placements")
        kw["placements"] = tuple(p)
    if "disaggregated" in d:
        if not isinstance(d["disaggregated"], bool):
            raise fail(f"expected true or false, got {d['disaggregated']!r}", "disaggregated")
        kw["disaggregated"] = d["disaggregated"]
    if "train_fraction" in d:
        v = d["train_fraction"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise fail(f"expected a number in (0, 1), got {v!r}", "train_fraction")
        kw["train_fraction"] = float(v)
    if d.get("slo") is not None:
        try:
            parse_slo(str(d["slo"]))
        except UserError as e:
            raise fail(e.message, "slo") from None
        kw["slo"] = str(d["slo"])
    study = ServingStudy(**kw)
    if not study.series:
        raise fail("expected at least one placement or disaggregated: true", "placements")
    return study
