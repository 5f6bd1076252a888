"""Serving simulation: requests arriving over time, continuous batching, a KV cache per request, and
latency SLOs, driven by recorded routing (docs/serving.md).

``serve(ServeConfig(...))`` runs one workload; ``moesim simulate --workload FILE`` and
:func:`moesim.workflows.serve_run` build the config from names and flags.
"""

from __future__ import annotations

from moesim.serving.config import ServeConfig, Slo, parse_slo
from moesim.serving.engine import serve
from moesim.serving.metrics import ServeResult
from moesim.serving.schedulers import SCHEDULERS
from moesim.serving.workload import Arrivals, Lengths, Speculative, WorkloadSpec, load_workload

__all__ = ["SCHEDULERS", "Arrivals", "Lengths", "ServeConfig", "ServeResult", "Slo", "Speculative",
           "WorkloadSpec", "load_workload", "parse_slo", "serve"]
