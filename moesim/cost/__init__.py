"""Cost model: seconds for each op of an MoE layer on each device, and for moving bytes."""

from moesim.cost.model import CostModel

__all__ = ["CostModel"]
