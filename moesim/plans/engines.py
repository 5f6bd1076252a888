"""What a serving engine needs besides a placement file: the launch flags, and which plans it can run.

Engine facts (versions checked, docs/plan.md §3 names the files):

- SGLang 0.5.23 (``python/sglang/srt/eplb/expert_location.py``, ``server_args.py``): physical experts
  per layer = ``num_logical + --ep-num-redundant-experts``, divided evenly over ``--ep-size`` ranks;
  an ``--init-expert-location`` map is used as given, so a map wider than that allocation, or read
  with another EP size, is not refused but misroutes tokens. Models without
  ``get_model_config_for_expert_location`` (Mixtral, Phi-3.5-MoE, OLMoE; Switch is not served) get
  a one-layer dummy config and the first forward pass asserts on a non-trivial map. A non-trivial
  map defaults ``--ep-dispatch-algorithm`` to ``static``, which needs an all-to-all backend
  (``--moe-a2a-backend``).
- vLLM-Ascend at 182b75ea (after v0.25.1rc1; ``vllm_ascend/eplb/core/eplb_utils.py``,
  ``vllm_ascend/ops/fused_moe/routed_experts.py``, ``vllm_ascend/ascend_config.py``): the static
  map (``additional_config.eplb_config.expert_map_path``) is Model Runner V1 only and "scheduled for
  removal in v0.25.1"; its spare slots must also be announced as ``num_redundant_experts`` or the
  layer raises "EPLB local expert capacity mismatch"; the map is indexed by EP rank, so its device
  count must equal the EP size (tensor x data parallel). Upstream vLLM has no placement file.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from moesim.errors import UserError
from moesim.io import atomic_write_text
from moesim.plans.plan import Plan
from moesim.specs.model import MoEModel

SGLANG_CHECKED = "sglang 0.5.23"
VLLM_ASCEND_CHECKED = "vllm-ascend 182b75ea (after v0.25.1rc1)"

# Model families (matched in the model spec's name) each engine cannot place, and why.
UNPLACEABLE: dict[str, dict[str, str]] = {
    "SGLang": {
        "mixtral": "Mixtral (no get_model_config_for_expert_location: a non-trivial map asserts)",
        "phi": "Phi-3.5-MoE (no get_model_config_for_expert_location: a non-trivial map asserts)",
        "olmoe": "OLMoE (no get_model_config_for_expert_location: a non-trivial map asserts)",
        "switch": "Switch Transformers (encoder-decoder, not served by SGLang)",
    },
    "vLLM-Ascend": {
        "switch": "Switch Transformers (encoder-decoder, not served by vLLM)",
    },
}


@dataclass(frozen=True)
class EngineLaunch:
    """The flags and environment an engine must be started with to load one exported file."""

    engine: str
    file: str
    flags: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def command_line(self) -> str:
        """The environment assignments and flags as one shell-quoted line."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return " ".join(x for x in (env, " ".join(shlex.quote(f) for f in self.flags)) if x)

    def to_dict(self) -> dict[str, object]:
        return {"engine": self.engine, "file": self.file, "flags": list(self.flags), "env": dict(self.env),
                "command_line": self.command_line(), "notes": list(self.notes)}

    def text(self) -> str:
        """The ``<file>.flags.txt`` contents: the command line, then the notes as comments."""
        lines = [f"# {self.engine} launch flags for {self.file}", self.command_line()]
        return "\n".join(lines + [f"# {n}" for n in self.notes]) + "\n"


def flags_path(path: str | Path) -> Path:
    """Where the flags of an exported file are written: beside it, ``<file>.flags.txt``."""
    return Path(f"{path}.flags.txt")


def write_flags(launch: EngineLaunch, path: str | Path) -> Path:
    out = flags_path(path)
    atomic_write_text(out, launch.text())
    return out


def check_family(model: MoEModel, engine: str, path: str) -> None:
    """Refuse a model whose family the engine cannot place (by the spec's name, before any ``@dtype``)."""
    name = model.name.split("@")[0].lower()
    for key, why in UNPLACEABLE[engine].items():
        if re.search(rf"(^|[^a-z]){key}", name):
            raise UserError(f"{engine} export: {model.name} is {why}; {engine} cannot load an expert "
                            "placement for it", file=path, field="model")


def nodes_of(plan: Plan) -> int:
    """Nodes the plan's devices span (device ids ``n<node>.gpu<i>``; 1 when they do not say)."""
    return len({d.split(".")[0] for d in plan.devices}) if all("." in d for d in plan.devices) else 1


def check_ep_size(plan: Plan, engine: str, ep_size: int | None, path: str) -> None:
    """The engine's EP size must be the plan's device count (each rank holds one device's slots)."""
    G, S = plan.placement.shape[1:]
    if ep_size is None or ep_size == G:
        return
    if ep_size < 1:
        raise UserError(f"expected a positive EP size, got {ep_size}", field="--ep-size")
    physical = G * S
    if engine == "SGLang":
        read = (f"SGLang would read {physical} / {ep_size} = {physical // ep_size} slots per rank"
                if physical % ep_size == 0
                else f"SGLang refuses it ({physical} slots do not divide by {ep_size})")
    else:
        read = "vLLM-Ascend indexes the map by EP rank and would use the wrong devices' rows"
    raise UserError(f"{engine} export: the plan places experts on {G} devices x {S} slots ({physical} per "
                    f"layer) but --ep-size is {ep_size}; {read}. Plan for {ep_size} GPUs or launch with EP "
                    f"{G}", file=path, field="--ep-size")


def sglang_launch(plan: Plan, model: MoEModel, path: str | Path, *,
                  dispatch: str | None = None, tp_size: int | None = None) -> EngineLaunch:
    """SGLang flags for a ``physical_to_logical_map`` file of ``plan`` (over EP ranks); ``tp_size``:
    the GPUs when each EP rank is a group of ``tp_size / G`` GPUs sharding its experts (SGLang's
    ``moe_tp_size = tp_size // ep_size``, ``python/sglang/srt/distributed/parallel_state.py`` @5c69e32)."""
    G, S = plan.placement.shape[1:]
    redundant = G * S - model.num_experts
    mode = dispatch or str(plan.params.get("dispatch", "even"))
    algorithm = "static" if mode == "local" else "dynamic"
    flags = ["--tp-size", str(tp_size or G), "--ep-size", str(G), "--ep-num-redundant-experts",
             str(redundant),
             "--init-expert-location", str(Path(path).resolve()), "--ep-dispatch-algorithm", algorithm]
    notes = [f"checked against {SGLANG_CHECKED}; EP rank g must run on the plan's device g "
             f"({', '.join(plan.devices[:3])}{', ...' if G > 3 else ''})",
             "leave --enable-eplb off, or SGLang replaces this placement after "
             "--eplb-rebalance-num-iterations forward passes"]
    if algorithm == "static":
        flags += ["--moe-a2a-backend", "deepep"]
        notes.append("static dispatch (each rank uses its own replica, moesim --dispatch local) is refused "
                     "without an all-to-all backend: --moe-a2a-backend deepep (or another backend you run)")
    else:
        notes.append("dynamic dispatch picks a replica at random per token, as moesim --dispatch even "
                     "assumes")
    if tp_size is not None and tp_size != G:
        k = tp_size // G
        notes.append(f"each EP rank is a group of {k} GPUs (SGLang's moe_tp groups: ranks [j x {k}, "
                     f"(j + 1) x {k})) holding 1/{k} of its experts; SGLang refuses a "
                     "moe_intermediate_size that moe_tp_size does not divide")
    if (n := nodes_of(plan)) > 1:
        notes.append(f"the plan spans {n} nodes: add --nnodes {n} --node-rank <i> "
                     "--dist-init-addr <host:port>")
    return EngineLaunch("SGLang", str(path), tuple(flags), (), tuple(notes))


def sglang_counts_launch(model: MoEModel, path: str | Path, *, ep_size: int | None,
                         redundant: int) -> EngineLaunch:
    """SGLang flags for a ``logical_count`` file: SGLang runs its own EPLB on the loads at start-up."""
    physical = model.num_experts + redundant
    if ep_size is not None and (ep_size < 1 or physical % ep_size):
        raise UserError(f"{model.num_experts} experts + {redundant} redundant = {physical} physical "
                        f"experts do not divide over --ep-size {ep_size}", field="--ep-size")
    flags = ["--init-expert-location", str(Path(path).resolve()),
             "--ep-num-redundant-experts", str(redundant)]
    if ep_size is not None:
        flags = ["--tp-size", str(ep_size), "--ep-size", str(ep_size), *flags]
    notes = [f"checked against {SGLANG_CHECKED}: the counts go through SGLang's EPLB (--eplb-algorithm, "
             "default auto) at start-up, which needs (experts + redundant) divisible by the EP size"]
    if ep_size is None:
        notes.append("add --tp-size G --ep-size G with (num_experts + redundant) divisible by G")
    return EngineLaunch("SGLang", str(path), tuple(flags), (), tuple(notes))


def vllm_ascend_launch(plan: Plan, model: MoEModel, path: str | Path) -> EngineLaunch:
    """vLLM-Ascend (Model Runner V1) flags for an expert-map file of ``plan``."""
    G, S = plan.placement.shape[1:]
    redundant = G * S - model.num_experts
    config = {"eplb_config": {"expert_map_path": str(Path(path).resolve()),
                              "num_redundant_experts": redundant}}
    flags = ("--tensor-parallel-size", str(G), "--enable-expert-parallel",
             "--additional-config", json.dumps(config, separators=(",", ":")))
    notes = (f"checked against {VLLM_ASCEND_CHECKED}: the static expert map is deprecated there (Model "
             "Runner V1 only, 'scheduled for removal in v0.25.1'); Model Runner V2 refuses "
             "it at start-up (the two runners' EPLB schemas cannot be mixed)",
             "num_redundant_experts must equal the map's spare slots or the MoE layers raise 'EPLB local "
             "expert capacity mismatch'",
             f"the EP size (tensor x data parallel) must be {G}, the map's device_count; with data "
             "parallelism use --tensor-parallel-size T --data-parallel-size D, T x D = " + str(G),
             "MRv1 static EPLB was verified upstream on DeepSeek-V3.1/R1 with W8A8/W4A8 weights")
    return EngineLaunch("vLLM-Ascend", str(path), flags, (("VLLM_USE_V2_MODEL_RUNNER", "0"),), notes)
