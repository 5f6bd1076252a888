"""SimPy processes, one module per kind of event: weight fetches, offloaded experts, overlapped MoE."""
