"""Hypothesis fuzzing of moesim's loaders: only UserError may escape, and memory stays bounded.

Each target reads one kind of user file (hardware profile, model spec or config.json, routing trace,
converter input, plan, YAML text). Inputs are valid files mutated at random places (values swapped
for nasty ones: huge, negative, NaN, infinite, wrongly typed, deeply nested) or raw random bytes.
:func:`run_fuzz` runs a target's examples in a forked child whose address space may grow by at most
``growth_bytes`` (``RLIMIT_AS``): a memory bomb that slipped through is a MemoryError, i.e. a failure.
"""

from __future__ import annotations

import copy
import io
import json
import os
import resource
import sys
import tempfile
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim.errors import UserError
from tests import robust_inputs as ri

REPO = Path(__file__).resolve().parents[1]
UNITS = ["B", "GB", "GiB", "TB", "PB", "b", "GB/s", "TB/s", "Gbps", "TFLOP/s", "PFLOP/s", "OPS", "s",
         "us", "ns", "min", "GHz", "GFLOP", "parsec", ""]
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**15, 2**31, 2**63, 10**12, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
)
QUANTITIES = st.builds(lambda n, u: f"{n} {u}".strip(),
                       st.one_of(NUMBERS, st.sampled_from(["1e400", "inf", "-inf", "nan", ".5", "1e-300"])),
                       st.sampled_from(UNITS))
SCALARS = st.one_of(NUMBERS, QUANTITIES, st.text(max_size=20), st.booleans(), st.none(),
                    st.sampled_from(["all", "gqa", "mla", "h100-sxm5", "nvlink4", "gpu[0-7]", "gpu*",
                                     "nic[0-99999999]", "cpu0", "lru", "fetch", "bf16"]))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict/list (the places a mutation may hit)."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: Any, max_mutations: int = 4) -> Any:
    """``base`` with a few places replaced by nasty values, deleted, or given unknown keys."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(VALUES)
        else:
            parent[path[-1]] = draw(VALUES)
    return doc


def _dump(data: Any) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, ValueError, OverflowError):
        return json.dumps(data, default=str)


# ---- targets: each takes one drawn input and a scratch folder, and calls a loader --------------------


def _load_yaml(name: str) -> Any:
    return yaml.safe_load((REPO / name).read_text(encoding="utf-8"))


def hardware_target(data: Any, folder: Path) -> None:
    from moesim.specs.hardware_file import load_cluster, validate_file

    path = folder / "hw.yaml"
    path.write_text(data if isinstance(data, str) else _dump(data), encoding="utf-8")
    cluster = load_cluster(path)
    if cluster.gpus:  # routes are part of loading a usable cluster
        cluster.path(cluster.devices[0].id, cluster.gpus[-1].id)
    validate_file(path)


def model_target(data: Any, folder: Path) -> None:
    from moesim.specs import load_model
    from moesim.specs.model_file import model_summary

    path = folder / ("config.json" if isinstance(data, dict) and "model_type" in data else "model.yaml")
    path.write_text(data if isinstance(data, str) else _dump(data), encoding="utf-8")
    model_summary(load_model(path))


@dataclass(frozen=True)
class NpzSpec:
    arrays: dict[str, np.ndarray]
    meta: str | None
    compressed: bool
    flips: tuple[tuple[int, int], ...]
    """(byte offset, xor mask) corruptions of the written file."""


def trace_target(spec: NpzSpec, folder: Path) -> None:
    from moesim.traces import RoutingTrace

    buf = io.BytesIO()
    arrays = dict(spec.arrays)
    if spec.meta is not None:
        arrays["meta_json"] = np.array(spec.meta)
    (np.savez_compressed if spec.compressed else np.savez)(buf, **arrays)
    data = bytearray(buf.getvalue())
    for at, mask in spec.flips:
        data[at % len(data)] ^= mask
    path = folder / "t.npz"
    path.write_bytes(bytes(data))
    trace = RoutingTrace.load(path)
    trace.load_matrix(2)


def converter_target(case: tuple[str, str, Any], folder: Path) -> None:
    from moesim.traces.convert import convert

    fmt, suffix, content = case
    path = folder / f"in{suffix}"
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=False)
    else:
        path.write_text(content, encoding="utf-8")
    convert([path], fmt)


def plan_target(data: Any, folder: Path) -> None:
    from moesim.plans.plan import Plan
    from moesim.specs import load_model

    path = folder / "plan.yaml"
    path.write_text(data if isinstance(data, str) else _dump(data), encoding="utf-8")
    Plan.load(path).validate(load_model("mixtral-8x7b"))


def profile_target(data: Any, folder: Path) -> None:
    from moesim.traces.synth_fit import from_profile
    from moesim.traces.synth_profile import load_profile

    path = folder / "profile.json"
    path.write_text(json.dumps(data, default=str), encoding="utf-8")
    from_profile(load_profile(path), num_layers=2, num_experts=8, top_k=2, trial_tokens=64)


# ---- strategies ---------------------------------------------------------------------------------------


def hardware_inputs() -> st.SearchStrategy:
    cluster = yaml.safe_load(ri.CLUSTER)
    builtin = _load_yaml("hardware/h100x8.yaml")
    return st.one_of(mutated(cluster), mutated(builtin), st.text(max_size=200),
                     st.builds(lambda d: "[" * d + "]" * d, st.integers(0, 3000)))


def model_inputs() -> st.SearchStrategy:
    names = ("mixtral-8x7b", "deepseek-v3", "gpt-oss-20b")
    specs = [_load_yaml(f"moesim/specs/models/{n}.yaml") for n in names]
    hf = {"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
          "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
          "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "decoder_sparse_step": 1,
          "mlp_only_layers": [], "vocab_size": 151936}
    ds = {"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
          "moe_intermediate_size": 2048, "n_routed_experts": 256, "num_experts_per_tok": 8,
          "n_shared_experts": 1, "first_k_dense_replace": 3, "intermediate_size": 18432,
          "num_attention_heads": 128, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
          "qk_rope_head_dim": 64, "v_head_dim": 128, "n_group": 8, "topk_group": 4}
    return st.one_of(*[mutated(s) for s in specs], mutated(hf), mutated(ds), st.text(max_size=200))


_DTYPES = st.sampled_from(["<i2", "<i4", "<i8", "<u2", "|i1", "<f4", "<f8", "|b1", "<U3", "|S2", "<c8"])


@st.composite
def _array(draw: st.DrawFn) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    dtype = np.dtype(draw(_DTYPES))
    n = int(np.prod(shape))
    values = draw(st.lists(st.integers(-(2**16), 2**16), min_size=n, max_size=n))
    return np.array(values).astype(dtype, copy=False).reshape(shape) if n else np.zeros(shape, dtype)


_META = st.one_of(
    st.none(), st.text(max_size=30),
    st.builds(json.dumps, st.dictionaries(
        st.sampled_from(["num_experts", "top_k", "model", "n_tokens", "x"]),
        st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
                  st.text(max_size=5), st.none()),
        max_size=3)),
    st.builds(lambda d: "[" * d + "]" * d, st.integers(0, 5000)),
)


def trace_inputs() -> st.SearchStrategy:
    keys = st.sampled_from(["expert_ids", "expert_ids", "seq_id", "pos", "phase", "layer_ids",
                            "gate_weights", "step_id"])
    return st.builds(NpzSpec, st.dictionaries(keys, _array(), max_size=4), _META, st.booleans(),
                     st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3).map(tuple))


def _jsonl(records: list[Any]) -> str:
    return "\n".join(json.dumps(r, default=str) for r in records) + "\n"


def converter_inputs() -> st.SearchStrategy:
    record = {"dataset": "d", "problem_id": 0, "layer": 0, "token_idx": 0, "experts": [1, 2],
              "gating_probs": [0.6, 0.4]}
    jsonl = st.lists(mutated(record, 2), min_size=1, max_size=6).map(
        lambda rs: ("jsonl", ".jsonl", _jsonl(rs)))
    csv_row = st.tuples(NUMBERS, NUMBERS, st.text(max_size=4),
                        st.one_of(st.just("[1, 2]"), st.text(max_size=12)))
    deepseek = st.lists(csv_row, max_size=6).map(
        lambda rows: ("deepseek-csv", ".csv", "Layer ID,Batch Number,Token,Activated Expert IDs\n"
                      + "".join(f'{a},{b},{c!r},"{d}"\n' for a, b, c, d in rows)))
    completion = st.fixed_dictionaries({"routed_experts": VALUES, "prompt_routed_experts": VALUES})
    vllm = st.lists(completion, max_size=3).map(
        lambda cs: ("vllm-routed", ".json", json.dumps(cs, default=str)))
    counts_csv = st.lists(st.tuples(NUMBERS, NUMBERS, NUMBERS, NUMBERS), max_size=6).map(
        lambda rows: ("counts", ".csv",
                      "step,layer,expert,count\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows)))
    counts_npy = _array().map(lambda a: ("counts", ".npy", a))
    return st.one_of(jsonl, deepseek, vllm, counts_csv, counts_npy)


def plan_inputs() -> st.SearchStrategy:
    plan = {"schema": "moesim-plan/v1", "planner": "x", "model": "mixtral-8x7b", "devices": ["n0.gpu0"],
            "num_experts": 8, "slots_per_device": 8,
            "layers": [{"layer": i, "slots": [list(range(8))]} for i in range(32)],
            "cache": {"policy": "lru", "capacity_experts": [4] * 32, "miss": "fetch", "prefetch": "none"}}
    return st.one_of(mutated(plan), st.text(max_size=200))


def profile_inputs() -> st.SearchStrategy:
    profile = json.loads((REPO / "traces" / "synth-profile-mixtral-8x7b.json").read_text(encoding="utf-8"))
    return mutated(profile)


@dataclass(frozen=True)
class Target:
    name: str
    call: Callable[[Any, Path], None]
    strategy: Callable[[], st.SearchStrategy]


TARGETS = {t.name: t for t in (
    Target("hardware", hardware_target, hardware_inputs),
    Target("model", model_target, model_inputs),
    Target("trace", trace_target, trace_inputs),
    Target("converters", converter_target, converter_inputs),
    Target("plan", plan_target, plan_inputs),
    Target("synth-profile", profile_target, profile_inputs),
)}


# ---- running -----------------------------------------------------------------------------------------


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _fuzz_here(target: Target, examples: int, derandomize: bool) -> int:
    """Run ``examples`` inputs through ``target`` in this process; the number of calls made."""
    calls = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @given(target.strategy())
        def fuzz(data: Any) -> None:
            nonlocal calls
            calls += 1
            try:
                target.call(data, folder)
            except UserError as e:
                assert len(str(e).splitlines()) == 1, f"a UserError of several lines: {e}"

        fuzz()
    return calls


def run_fuzz(name: str, examples: int, *, derandomize: bool = True, growth_bytes: int = 512 * 2**20) -> int:
    """Fuzz one target in a forked child (address space capped at its size + ``growth_bytes``).

    Returns the number of inputs tried; raises AssertionError with the child's report on a failure.
    """
    target = TARGETS[name]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: cap memory, fuzz, report through the pipe, never return into pytest
        os.close(read)
        code, report = 1, ""
        try:
            limit = _vm_bytes() + growth_bytes
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            calls = _fuzz_here(target, examples, derandomize)
            code, report = 0, json.dumps({"calls": calls})
        except BaseException:
            report = traceback.format_exc()
        finally:
            with os.fdopen(write, "w") as fh:
                fh.write(report)
            sys.stdout.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as fh:
        report = fh.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError(f"fuzzing {name} failed:\n{report}")
    return int(json.loads(report)["calls"])


def _zip_member_names(path: Path) -> list[str]:  # small helper for debugging a failing trace input
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()
