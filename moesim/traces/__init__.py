"""Routing traces: the v1 format, views, converters, recorder, synthesis, statistics, caches."""

from moesim.traces.cache import hit_rates, make_cache
from moesim.traces.counts import LoadCounts
from moesim.traces.trace import DECODE, PREFILL, SCHEMA, UNKNOWN, RoutingTrace

__all__ = ["DECODE", "PREFILL", "SCHEMA", "UNKNOWN", "LoadCounts", "RoutingTrace", "hit_rates", "make_cache"]
