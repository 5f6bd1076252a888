"""Runtime profiles: what a serving framework adds around the kernels (``--runtime vllm``).

A profile (``moesim/specs/runtimes/<name>.yaml``, or a file of your own; docs/cost.md "Framework
overhead") gives the per-step CPU time the GPU waits for (scheduling, sampling, input preparation),
a per-layer overhead, whether decode replays CUDA graphs (then each kernel costs ``graph_launch``
instead of the GPU's ``overheads.launch``) and the GPU memory the framework keeps for itself.
The default, ``kernels``, is all zeros: kernel times only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moesim.resources import builtin_names
from moesim.specs.yaml_fields import Fields, load_document, origin_of

DEFAULT_RUNTIME = "kernels"
_TOP = frozenset({"kind", "name", "description", "source", "verified", "notes", "cuda_graphs", "overheads",
                  "memory"})
_OVERHEADS = frozenset({"step", "layer", "graph_launch", "source", "estimated", "verified"})
_MEMORY = frozenset({"reserve", "reserve_fraction", "source", "estimated", "verified"})


@dataclass(frozen=True)
class Runtime:
    """A serving framework's overheads (seconds) and memory reserve (bytes, fraction of the GPU)."""

    name: str = DEFAULT_RUNTIME
    cuda_graphs: bool = False
    """Steps replay captured CUDA graphs: each kernel costs ``graph_launch_s``."""
    step_overhead_s: float = 0.0
    """CPU time per step the GPUs wait for (scheduling, input preparation, sampling)."""
    layer_overhead_s: float = 0.0
    """Per decoder layer, beyond its kernels' launches (eager Python dispatch)."""
    graph_launch_s: float = 0.0
    """One kernel replayed from a CUDA graph (used when ``cuda_graphs``)."""
    memory_reserve_bytes: float = 0.0
    """GPU memory the framework keeps besides the model (CUDA context, allocator, graphs)."""
    memory_reserve_fraction: float = 0.0
    """Share of each GPU's memory left out (vLLM: 1 - gpu_memory_utilization)."""
    estimated: bool = False
    source: str = ""

    def launch_overhead_s(self, device_launch_s: float) -> float:
        """What one kernel launch costs under this runtime on a GPU whose own launch costs
        ``device_launch_s``."""
        return self.graph_launch_s if self.cuda_graphs else device_launch_s

    def reserve_bytes(self, capacity_bytes: float) -> float:
        """GPU memory kept by the framework on a device of ``capacity_bytes``."""
        share = self.memory_reserve_fraction * capacity_bytes if self.memory_reserve_fraction else 0.0
        return self.memory_reserve_bytes + share


def builtin_runtimes() -> list[str]:
    return builtin_names("runtime")


def load_runtime(name_or_path: str | Path | None) -> Runtime:
    """A built-in runtime by name (``vllm``) or a runtime YAML file; None: the default."""
    if name_or_path is None:
        return Runtime()
    if isinstance(name_or_path, Runtime):
        return name_or_path
    doc = load_document("runtime", name_or_path)
    f = doc.fields
    f.check_keys(_TOP)
    if "kind" in f and f.str("kind") != "runtime":
        raise f.error("kind", f"expected 'runtime', got {f.str('kind')!r}")
    own_name = "name" in f and origin_of(doc.origins, "name", str(doc.path)) == str(doc.path)
    out = {"name": f.str("name") if own_name else doc.path.stem, "cuda_graphs": f.bool("cuda_graphs", False),
           "source": " ".join(str(f.raw("source", "")).split())}
    estimated = False
    if "overheads" in f:
        o = f.mapping("overheads")
        o.check_keys(_OVERHEADS)
        out.update(step_overhead_s=o.quantity("step", "time", 0.0),
                   layer_overhead_s=o.quantity("layer", "time", 0.0),
                   graph_launch_s=o.quantity("graph_launch", "time", 0.0))
        estimated |= o.bool("estimated", False)
    if "memory" in f:
        m = f.mapping("memory")
        m.check_keys(_MEMORY)
        out.update(memory_reserve_bytes=m.quantity("reserve", "bytes", 0.0),
                   memory_reserve_fraction=m.fraction("reserve_fraction", 0.0))
        estimated |= m.bool("estimated", False)
    if out["cuda_graphs"] and not out.get("graph_launch_s"):
        raise Fields(f.data, "", doc.origins, str(doc.path)).error(
            "cuda_graphs", "expected overheads.graph_launch (what one kernel replayed from a graph costs)")
    return Runtime(**out, estimated=estimated)
