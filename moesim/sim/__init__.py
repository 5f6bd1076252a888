"""The simulator: SimPy replay of MoE layers on a cluster, with expert parallelism and offloading."""

from moesim.plans.default import default_plan
from moesim.sim.config import SimConfig
from moesim.sim.engine import simulate
from moesim.sim.results import SimResult

__all__ = ["SimConfig", "SimResult", "default_plan", "simulate"]
