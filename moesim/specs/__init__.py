"""Machine and model descriptions: YAML hardware profiles -> Cluster, model specs -> MoEModel."""

from moesim.specs.hardware_file import load_cluster, load_device_spec
from moesim.specs.model import with_weight_dtype
from moesim.specs.model_file import load_model

__all__ = ["load_cluster", "load_device_spec", "load_model", "with_weight_dtype"]
