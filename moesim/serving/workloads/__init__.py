"""Workloads shipped with moesim (``--workload chat``), as YAML files (docs/serving.md)."""
