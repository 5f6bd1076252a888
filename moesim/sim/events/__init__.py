"""One module per kind of event: offloaded expert calls (lane jobs on a clock), overlapped MoE (SimPy)."""
