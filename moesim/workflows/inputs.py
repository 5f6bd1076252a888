"""The inputs every workflow loads: hardware, model, trace and the cost model (with its calibration).

Each accepts a name or path (what the command line and the sweep files hold) or an object already
loaded (what a sweep worker passes by reference), so a workflow never loads a file twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from moesim.cost import CostModel
from moesim.cost.cpu_experts import CpuOptions
from moesim.cost.sources import MeasuredTables
from moesim.errors import UserError
from moesim.specs import load_cluster, load_model, with_weight_dtype
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel, with_precision
from moesim.specs.precision import parse_precision_flag
from moesim.specs.runtime import Runtime
from moesim.traces.counts import LoadCounts
from moesim.traces.routing_data import load_routing_data
from moesim.traces.trace import RoutingTrace

DEFAULT_MODEL = "deepseek-v2-lite"
DEFAULT_TRACE = "deepseek-v2-lite-synth"
"""``moesim plan``'s workload when neither --model nor --trace is given (shipped with moesim)."""


def cluster_of(hw: str | Path | Cluster, *, nodes: int | None = None) -> Cluster:
    if isinstance(hw, Cluster):
        if nodes is not None and nodes != hw.nodes:
            raise UserError(f"the loaded cluster {hw.name} has {hw.nodes} nodes, asked for {nodes}",
                            field="--nodes")
        return hw
    if nodes is not None and nodes < 1:
        raise UserError(f"expected at least 1 node, got {nodes}", field="--nodes")
    return load_cluster(hw, nodes=nodes)


def model_of(model: str | Path | MoEModel, *, weight_dtype: str | None = None,
             precision: str | Mapping[str, str] | None = None) -> MoEModel:
    """The model spec with ``--weight-dtype`` (routed experts) and ``--precision`` (per tensor,
    ``"attention=fp8,kv_cache=fp8"`` or a mapping) applied."""
    spec = model if isinstance(model, MoEModel) else load_model(model)
    spec = spec if weight_dtype is None else with_weight_dtype(spec, weight_dtype)
    if precision:
        overrides = parse_precision_flag(precision) if isinstance(precision, str) else dict(precision)
        spec = with_precision(spec, overrides)
    return spec


def trace_of(trace: str | Path | RoutingTrace, model: MoEModel) -> RoutingTrace:
    if isinstance(trace, RoutingTrace):
        if hasattr(trace, "check_model"):
            trace.check_model(model)
        return trace
    return RoutingTrace.load(trace, model=model)


def model_and_trace(model: str | Path | MoEModel | None, trace: str | Path | RoutingTrace | LoadCounts | None,
                    *, weight_dtype: str | None = None, precision: str | Mapping[str, str] | None = None,
                    ) -> tuple[MoEModel, RoutingTrace | LoadCounts, str]:
    """The model and routing data of a planning run (a token-level trace, or per-step load counts), and
    the data's name: without either, the shipped DeepSeek-V2-Lite pair; without a model, the built-in
    spec the data names."""
    data_in: str | Path | RoutingTrace | LoadCounts = DEFAULT_TRACE if trace is None else trace
    loaded = isinstance(data_in, (RoutingTrace, LoadCounts))
    name = (data_in.source or "trace") if loaded else str(data_in)
    if model is None and trace is None:
        spec = load_model(DEFAULT_MODEL)
    elif model is None:
        probe = data_in if loaded else load_routing_data(data_in)
        try:
            spec = load_model(probe.model_name)
        except UserError:
            raise UserError(f"trace model {probe.model_name!r} is not a built-in model; give --model",
                            field="--model") from None
    else:
        spec = model_of(model)
    spec = model_of(spec, weight_dtype=weight_dtype, precision=precision)
    if loaded:
        data_in.check_model(spec)
        return spec, data_in, str(name)
    return spec, load_routing_data(data_in, model=spec), str(name)


def cost_model(cluster: Cluster, model: MoEModel, calibration: str | Path | MeasuredTables | None = None,
               *, cpu: CpuOptions | None = None, runtime: Runtime | None = None) -> CostModel:
    """The cost model of a run: tables loaded from ``calibration`` (a folder, one table, or a
    built-in name), else from the profile's ``calibration:`` folder, else the roofline alone; ``cpu``:
    the CPU expert kernel and NUMA mode."""
    from moesim.calibration.tables import load_calibration

    source = calibration if calibration is not None else cluster.calibration_dir
    tables = load_calibration(source) if isinstance(source, (str, Path)) else source
    return CostModel(cluster, model, tables, cpu=cpu, runtime=runtime)
