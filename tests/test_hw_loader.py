"""The hardware profile format: catalogs, extends, node templates, patterns, nodes override, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import UserError
from moesim.specs import load_cluster, load_device_spec
from moesim.specs.hardware_file import validate_file
from moesim.specs.yaml_fields import deep_merge, origin_of

TWO_GPUS = """\
kind: cluster
source: test
node:
  devices:
    gpu: {model: h100-sxm5, count: 2}
  switches: [sw]
  links:
    - {link: nvlink4, from: "gpu[0-1]", to: sw}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | str, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        load_cluster(str(path), **kwargs)
    return str(err.value)


def test_minimal_profile(tmp_path: Path) -> None:
    c = load_cluster(str(write(tmp_path, "two.yaml", TWO_GPUS)))
    assert c.name == "two"
    assert [d.id for d in c.devices] == ["n0.gpu0", "n0.gpu1"]
    assert c.switches == ("n0.sw",)
    assert c.bottleneck_bandwidth("n0.gpu0", "n0.gpu1") == pytest.approx(450e9 * 0.822)
    assert c.path_latency("n0.gpu0", "n0.gpu1") == pytest.approx(0.52e-6)


def test_extends_deep_merges_and_keeps_its_own_name(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", TWO_GPUS + "name: base\ndescription: the base\n")
    child = write(
        tmp_path,
        "child.yaml",
        "extends: base\nnode:\n  devices:\n    gpu: {count: 4}\n"
        "  links:\n    - {link: nvlink3, from: 'gpu*', to: sw}\n",
    )
    c = load_cluster(str(child))
    assert c.name == "child"  # the parent's name is not inherited
    assert len(c.gpus) == 4 and c.gpus[0].spec.model == "h100-sxm5"  # model kept, count overridden
    assert {ln.spec.kind for ln in c.links} == {"nvlink3"}  # lists replace
    assert load_cluster(str(tmp_path / "base.yaml")).name == "base"


def test_extends_null_deletes_a_key(tmp_path: Path) -> None:
    base = (
        TWO_GPUS.replace(
            "    gpu: {model: h100-sxm5, count: 2}",
            "    gpu: {model: h100-sxm5, count: 2}\n    cpu: {model: epyc-9654}",
        )
        + "    - {link: pcie-gen5-x16, from: gpu0, to: cpu0}\n"
    )
    write(tmp_path, "base.yaml", base)
    child = write(
        tmp_path,
        "child.yaml",
        "extends: base.yaml\nnode:\n  devices:\n    cpu: null\n  links:\n"
        "    - {link: nvlink4, from: 'gpu[0-1]', to: sw}\n",
    )
    assert not load_cluster(str(child)).devices_of("cpu")
    assert load_cluster(str(tmp_path / "base.yaml")).devices_of("cpu")


def test_extends_a_builtin_by_name(tmp_path: Path) -> None:
    p = write(
        tmp_path, "mine.yaml", "extends: h100x8\nnodes: 2\nnode:\n  devices:\n    gpu: {model: h200-sxm}\n"
    )
    c = load_cluster(str(p))
    assert c.nodes == 2 and len(c.gpus) == 16 and c.gpus[0].spec.memory_bytes == 141e9


def test_device_entries_extend_and_override(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "own.yaml",
        TWO_GPUS.replace("model: h100-sxm5", "model: slow-h100")
        + """\
devices:
  slow-h100:
    extends: h100-sxm5
    memory: {bandwidth: 2 TB/s, source: my measurement}
    compute:
      peak: {fp8: null}
      source: fp8 disabled
""",
    )
    spec = load_cluster(str(p)).gpus[0].spec
    assert spec.model == "slow-h100"
    assert spec.memory_bandwidth_bytes_per_s == 2e12
    assert spec.memory_bytes == 81559 * 2**20  # inherited
    assert "fp8" not in spec.peak_flops_per_s and spec.peak_flops("fp8") == pytest.approx(989.4e12)
    assert spec.sources["memory"] == "my measurement"


def test_user_catalog_by_relative_path(tmp_path: Path) -> None:
    write(
        tmp_path,
        "cat.yaml",
        """\
kind: catalog
source: test
devices:
  tiny:
    kind: gpu
    source: made up
    memory: {capacity: 1 GiB, bandwidth: 100 GB/s, source: made up}
    compute: {peak: {bf16: 10 TFLOP/s}, source: made up}
links:
  slow-link: {bandwidth: 1 GB/s, latency: 10 us, efficiency: 0.5, source: made up}
""",
    )
    p = write(
        tmp_path,
        "c.yaml",
        TWO_GPUS.replace("h100-sxm5", "tiny").replace("nvlink4", "slow-link") + "catalogs: [cat.yaml]\n",
    )
    c = load_cluster(str(p))
    assert c.gpus[0].spec.memory_bytes == 2**30
    assert c.bottleneck_bandwidth("n0.gpu0", "n0.gpu1") == pytest.approx(0.5e9)
    assert c.path_latency("n0.gpu0", "n0.gpu1") == pytest.approx(20e-6)
    assert validate_file(tmp_path / "cat.yaml") == "catalog: 1 devices, 1 links"


def test_nodes_override_and_fabric(tmp_path: Path) -> None:
    c1 = load_cluster("h100x8")
    c8 = load_cluster("h100x8", nodes=8)
    assert c1.nodes == 1 and c8.nodes == 8
    assert len(c8.gpus) == 64 and len(c8.devices_of("gpu", 7)) == 8
    assert c8.devices_of("gpu", 7)[3].id == "n7.gpu3"
    assert "ib" in c8.switches and "n7.nic7" in c8.switches
    assert load_cluster("h100x8x4", nodes=2).nodes == 2


@pytest.mark.parametrize("nodes", [0, -1, True, 2.5])
def test_nodes_override_must_be_a_positive_count(nodes: object) -> None:
    with pytest.raises(UserError, match="node count"):
        load_cluster("h100x8", nodes=nodes)  # type: ignore[arg-type]


def test_patterns_ranges_lists_star_and_mesh(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "m.yaml",
        """\
kind: cluster
source: test
node:
  devices:
    gpu: {model: mi300x, count: 4}
    cpu: {model: epyc-9654, count: 1}
  switches: ["nic[0,2]"]
  links:
    - {link: xgmi-mi300x, mesh: "gpu*"}
    - {link: pcie-gen5-x16, from: "gpu[0-3]", to: cpu0}
    - {link: pcie-gen5-x16, from: "gpu[0,2]", to: "nic[0,2]"}
""",
    )
    c = load_cluster(str(p))
    pairs = {frozenset((ln.src, ln.dst)) for ln in c.links if ln.spec.kind == "xgmi-mi300x"}
    assert len(pairs) == 6  # 4 choose 2
    assert [ln.spec.kind for ln in c.path("n0.gpu1", "n0.gpu3")] == ["xgmi-mi300x"]
    assert {(ln.src, ln.dst) for ln in c.links if "nic" in ln.dst} == {
        ("n0.gpu0", "n0.nic0"),
        ("n0.gpu2", "n0.nic2"),
    }


def test_efficiency_curves_and_pim(tmp_path: Path) -> None:
    p = (
        write(
            tmp_path,
            "c.yaml",
            TWO_GPUS
            + """\
devices:
  curvy:
    extends: h100-sxm5
    efficiency_curves:
      compute: [["1 GFLOP", 0.2], ["1 TFLOP", 0.75]]
      memory: [["1 MiB", 0.3], ["1 GiB", 0.9]]
      source: made up
""",
        )
        .read_text()
        .replace("model: h100-sxm5", "model: curvy")
    )
    spec = load_cluster(str(write(tmp_path, "c.yaml", p))).gpus[0].spec
    assert spec.efficiency_curves["compute"] == ((1e9, 0.2), (1e12, 0.75))
    assert spec.efficiency_curves["memory"] == ((2**20, 0.3), (2**30, 0.9))
    pim = load_device_spec("duplex-logic-pim")
    assert pim.kind == "pim" and pim.estimated
    assert pim.internal_bandwidth_bytes_per_s > 3 * pim.memory_bandwidth_bytes_per_s


def test_load_device_spec_and_dtype_fallback() -> None:
    t4 = load_device_spec("t4")
    assert "bf16" not in t4.peak_flops_per_s
    assert t4.peak_flops("bf16") == t4.peak_flops("fp16") == 65e12
    assert load_device_spec("h100-sxm5").launch_overhead_s == pytest.approx(4e-6)
    with pytest.raises(UserError, match="unknown device 'h100'"):
        load_device_spec("h100")


# ---- errors: file and field path named, what was expected said ------------------------------------


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (("count: 2}", "count: two}"), "node.devices.gpu.count", "expected a whole number >= 1, got 'two'"),
        (("count: 2}", "count: 0}"), "node.devices.gpu.count", "expected a whole number >= 1, got 0"),
        (
            ("h100-sxm5", "h100-sxm9"),
            "node.devices.gpu.model",
            "unknown device 'h100-sxm9'; expected one of: ",
        ),
        (
            ("link: nvlink4", "link: nvlink9"),
            "node.links[0].link",
            "unknown link 'nvlink9'; expected one of: ",
        ),
        (("to: sw", "to: sw2"), "node.links[0].to", "unknown vertex 'sw2'; expected one of: gpu[0-1], sw"),
        (("gpu[0-1]", "gpu[1-0]"), "node.links[0].from", "expected an index range"),
        (("switches: [sw]", "switches: [gpu5]"), "node.switches[0]", "expected a new vertex name"),
        (("kind: cluster", "kind: clutser"), "kind", "expected one of cluster, catalog, got 'clutser'"),
        (("source: test", "sauce: test"), "sauce", "unknown field; expected one of: "),
        (
            ("    gpu: {", "    tpu: {"),
            "node.devices.tpu",
            "unknown device kind; expected one of: gpu, cpu, pim",
        ),
        (("to: sw}", "to: sw, mesh: gpu0}"), "node.links[0].mesh", "expected either mesh: or from:/to:"),
    ],
)
def test_profile_errors(tmp_path: Path, edit: tuple[str, str], field: str, message: str) -> None:
    p = write(tmp_path, "bad.yaml", TWO_GPUS.replace(*edit))
    text = error_of(p)
    assert text.startswith(f"{p}: {field}: {message}"), text


def test_pairing_mismatch(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "bad.yaml",
        TWO_GPUS.replace("switches: [sw]", "switches: [sw, 'nic[0-2]']")
        + "    - {link: pcie-gen5-x16, from: 'gpu[0-1]', to: 'nic[0-2]'}\n",
    )
    assert "expected as many vertices as 'from' names (2) or a single one, got 3" in error_of(p)


def test_duplicate_link(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.yaml", TWO_GPUS + "    - {link: nvlink3, from: gpu0, to: sw}\n")
    assert (
        error_of(p) == f"{p}: node.links: expected one link per pair of vertices, got two between n0.gpu0 "
        f"and n0.sw"
    )


def test_disconnected_node_and_missing_fabric(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.yaml", TWO_GPUS.replace('"gpu[0-1]"', "gpu0"))
    assert error_of(p) == (
        f"{p}: node.links: expected a connected topology, got a graph in 2 parts: "
        f"n0.gpu1 cannot reach n0.gpu0"
    )
    p2 = write(tmp_path, "ok.yaml", TWO_GPUS)
    assert error_of(p2, nodes=2).startswith(
        f"{p2}: fabric: expected a connected topology, got a graph in 2 parts:"
        f" n1.gpu0 cannot reach n0.gpu0 (several nodes need a fabric:"
    )


def test_errors_in_a_parent_name_the_parent_file(tmp_path: Path) -> None:
    parent = write(
        tmp_path,
        "parent.yaml",
        TWO_GPUS + "devices:\n  x:\n    extends: h100-sxm5\n    memory: {capacity: 80}\n",
    )
    child = write(tmp_path, "child.yaml", "extends: parent\nnode:\n  devices:\n    gpu: {model: x}\n")
    assert error_of(child).startswith(f"{parent}: devices.x.memory.capacity: expected a size with its unit")


def test_extends_errors(tmp_path: Path) -> None:
    p = write(tmp_path, "a.yaml", "extends: nowhere\n")
    assert error_of(p).startswith(f"{p}: extends: unknown hardware profile 'nowhere'")
    write(tmp_path, "b.yaml", "extends: c\n")
    c = write(tmp_path, "c.yaml", "extends: b.yaml\n")
    assert "expected a chain of profiles without a loop, got c.yaml -> b.yaml -> c.yaml" in error_of(c)
    d = write(tmp_path, "d.yaml", TWO_GPUS + "devices:\n  self:\n    extends: self\n")
    assert "devices.self.extends" in validate_error(d)


def validate_error(path: Path) -> str:
    with pytest.raises(UserError) as err:
        validate_file(path)
    return str(err.value)


MEM = "memory: {capacity: 1 GB, bandwidth: 1 GB/s, source: s}"
PEAK = "compute: {peak: {bf16: 1 TFLOP/s}, source: s}"


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        (f"kind: gpu, source: s, {MEM}, compute: {{peak: {{}}, source: s}}", "devices.d.compute.peak",
         "expected at least one dtype"),
        (f"kind: gpu, source: s, {MEM}, compute: {{peak: {{bf17: 1 TFLOP/s}}, source: s}}",
         "devices.d.compute.peak.bf17", "unknown dtype"),
        (f"kind: gpu, source: s, memory: {{capacity: 1 GB, bandwidth: 1 GB/s}}, {PEAK}",
         "devices.d.memory.source", "missing required field"),
        (f"kind: pim, source: s, {MEM}, {PEAK}",
         "devices.d.memory.internal_bandwidth", "missing required field"),
        (f"kind: gpu, source: s, memory: {{capacity: 1 GB, bandwidth: 1 GB/s, efficiency: 1.5, source: s}}, "
         f"{PEAK}", "devices.d.memory.efficiency", "expected a fraction greater than 0"),
        (f"kind: gpu, source: s, verified: maybe, {MEM}, {PEAK}", "devices.d.verified",
         "expected markers from R, I, P, D, U"),
        (f"kind: gpu, source: s, {MEM}, {PEAK}, efficiency_curves: {{compute: [['1 GB', 0.5]], source: s}}",
         "devices.d.efficiency_curves.compute[0][0]", "expected an amount of work with its unit"),
        (f"kind: gpu, source: s, {MEM}, {PEAK}, efficiency_curves: {{memory: [['2 GB', 0.5], ['1 GB', 0.6]], "
         f"source: s}}", "devices.d.efficiency_curves.memory[1][0]", "expected sizes in increasing order"),
        (f"kind: cpu, source: s, memory: {{capacity: 1 GB, bandwidth: 1 GB/s, internal_bandwidth: 2 GB/s, "
         f"source: s}}, {PEAK}", "devices.d.memory.internal_bandwidth", "expected only on a pim device"),
    ],
)
def test_catalog_entry_errors(tmp_path: Path, entry: str, field: str, message: str) -> None:
    p = write(tmp_path, "cat.yaml", f"kind: catalog\nsource: test\ndevices:\n  d: {{{entry}}}\n")
    assert validate_error(p).startswith(f"{p}: {field}: {message}")


def test_link_entry_errors(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "cat.yaml",
        "kind: catalog\nsource: t\nlinks:\n  l: {bandwidth: 1 GB, latency: 1 us, source: s}\n",
    )
    assert validate_error(p) == (
        f"{p}: links.l.bandwidth: expected a bandwidth with its unit, such as "
        f"'3.35 TB/s', got '1 GB', which is a size"
    )
    p = write(tmp_path, "cat.yaml", "kind: catalog\nsource: t\nlinks:\n  l: {bandwidth: 1 GB/s, source: s}\n")
    assert validate_error(p) == f"{p}: links.l.latency: missing required field"


def test_a_catalog_is_not_a_cluster() -> None:
    assert "expected a cluster profile (kind: cluster)" in error_of("devices")


def _doc_example(doc: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / doc).read_text(encoding="utf-8")
    return text.split("## Example", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]


def test_the_documented_example_loads(tmp_path: Path) -> None:
    c = load_cluster(str(write(tmp_path, "my-node.yaml", _doc_example("hardware.md"))))
    assert c.name == "my-node" and len(c.gpus) == 2
    assert c.gpus[0].spec.memory_bandwidth_bytes_per_s == 1.9e12
    assert [ln.spec.kind for ln in c.path("n0.gpu0", "n0.gpu1")] == ["nvlink4-bridge"]


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=7), st.integers(0, 7))
def test_any_node_count_builds_a_connected_cluster(nodes: int, i: int, j: int) -> None:
    c = load_cluster("h100x8", nodes=nodes)
    assert len(c.gpus) == 8 * nodes and len(c.devices_of("cpu")) == 2 * nodes
    last = nodes - 1
    if last:
        assert c.bottleneck_bandwidth(f"n0.gpu{i}", f"n{last}.gpu{j}") == pytest.approx(50e9 * 0.97)
    elif i != j:
        assert c.bottleneck_bandwidth(f"n0.gpu{i}", f"n0.gpu{j}") == pytest.approx(450e9 * 0.822)


_INNER = st.dictionaries(st.sampled_from("xy"), st.integers())
_NESTED = st.dictionaries(st.sampled_from("abc"), st.integers() | _INNER)


@given(_NESTED, _NESTED)
def test_deep_merge_laws(base: dict, override: dict) -> None:
    merged, origins = deep_merge(base, override, {"": "base"}, "child")
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            assert merged[key] == {**base[key], **value}
        else:
            assert merged[key] == value and origins[key] == "child"
    for key in set(base) - set(override):
        assert merged[key] == base[key] and origin_of(origins, key, "?") == "base"
    assert deep_merge(base, {}, {}, "child")[0] == base
