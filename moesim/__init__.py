"""moesim: a discrete-event simulator and planner for Mixture-of-Experts system placement."""

__version__ = "0.1.0"
