"""The simulator: SimPy replay of MoE layers on a cluster, with expert parallelism and offloading."""

from moesim.sim.config import SimConfig
from moesim.sim.engine import default_plan, simulate
from moesim.sim.results import SimResult

__all__ = ["SimConfig", "SimResult", "default_plan", "simulate"]
