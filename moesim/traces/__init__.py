"""Routing traces: the v1 format, views, converters, recorder, synthesis, statistics, caches."""

from moesim.traces.trace import DECODE, PREFILL, SCHEMA, UNKNOWN, RoutingTrace

__all__ = ["DECODE", "PREFILL", "SCHEMA", "UNKNOWN", "RoutingTrace"]
