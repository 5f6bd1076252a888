"""Each class of user mistake: one line 'moesim: error: FILE: FIELD: MESSAGE' on stderr, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moesim.cli import main

CLUSTER = """\
kind: cluster
source: test
node:
  devices:
    gpu: {model: h100-sxm5, count: 2}
    cpu: {model: xeon-platinum-8480}
  switches: [sw]
  links:
    - {link: nvlink4, from: "gpu[0-1]", to: sw}
    - {link: pcie-gen5-x16, from: gpu0, to: cpu0}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("moesim: error: ")
    return lines[0].removeprefix("moesim: error: ")


def write(tmp_path: Path, text: str, name: str = "hw.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_missing_file(capsys, tmp_path: Path) -> None:
    p = tmp_path / "absent.yaml"
    assert one_error_line(capsys, "hw", "show", str(p)) == f"{p}: no such hardware profile file"
    assert one_error_line(capsys, "model", "show", str(p)) == f"{p}: no such model spec file"


def test_unknown_builtin_name(capsys) -> None:
    msg = one_error_line(capsys, "hw", "show", "h100x9")
    assert msg.startswith("unknown hardware profile 'h100x9'; built-in: ") and "h100x8" in msg


def test_bad_yaml(capsys, tmp_path: Path) -> None:
    p = write(tmp_path, "kind: cluster\nnode: {devices: [1\n")
    msg = one_error_line(capsys, "hw", "show", str(p))
    assert msg.startswith(f"{p}: expected valid YAML, got a syntax error at line 3, column 1: ")
    p = write(tmp_path, "name: x\n  bad indent: 1\n", "m.yaml")
    assert one_error_line(capsys, "model", "show", str(p)).startswith(f"{p}: expected valid YAML")


def test_missing_field(capsys, tmp_path: Path) -> None:
    p = write(tmp_path, CLUSTER.replace("source: test\n", ""))
    assert one_error_line(capsys, "hw", "show", str(p)) == f"{p}: source: missing required field"
    p = write(tmp_path, CLUSTER.replace("    - {link: nvlink4", "    - {kind: nvlink4"))
    assert one_error_line(capsys, "hw", "show", str(p)).startswith(
        f"{p}: node.links[0].kind: unknown field; expected one of: from, host_memory, link, mesh, to"
    )


def test_wrong_unit(capsys, tmp_path: Path) -> None:
    text = CLUSTER + "devices:\n  my-h100:\n    extends: h100-sxm5\n    memory: {capacity: 80 GB/s}\n"
    p = write(tmp_path, text.replace("model: h100-sxm5", "model: my-h100"))
    assert one_error_line(capsys, "hw", "show", str(p)) == (
        f"{p}: devices.my-h100.memory.capacity: expected a size with its unit, such as '80 GiB', "
        f"got '80 GB/s', which is a bandwidth"
    )
    p = write(tmp_path, text.replace("model: h100-sxm5", "model: my-h100").replace("80 GB/s", "80"))
    assert one_error_line(capsys, "hw", "show", str(p)) == (
        f"{p}: devices.my-h100.memory.capacity: expected a size with its unit, such as '80 GiB', got 80 "
        f"(a bare number)"
    )
    p = write(tmp_path, text.replace("model: h100-sxm5", "model: my-h100").replace("80 GB/s", "80 gigs"))
    assert one_error_line(capsys, "hw", "show", str(p)).endswith("got '80 gigs' (unknown unit 'gigs')")


def test_unknown_device_and_link(capsys, tmp_path: Path) -> None:
    p = write(tmp_path, CLUSTER.replace("model: h100-sxm5", "model: h100-sxm"))
    msg = one_error_line(capsys, "hw", "show", str(p))
    assert msg.startswith(
        f"{p}: node.devices.gpu.model: unknown device 'h100-sxm'; expected one of: h100-sxm5, "
    )
    p = write(tmp_path, CLUSTER.replace("link: nvlink4", "link: nvlink-4"))
    msg = one_error_line(capsys, "hw", "show", str(p))
    assert msg.startswith(
        f"{p}: node.links[0].link: unknown link 'nvlink-4'; expected one of: pcie-gen3-x16, "
    )
    p = write(tmp_path, CLUSTER.replace("to: cpu0", "to: cpu1"))
    assert one_error_line(capsys, "hw", "show", str(p)) == (
        f"{p}: node.links[1].to: unknown vertex 'cpu1'; expected one of: gpu[0-1], cpu0, sw"
    )


def test_disconnected_graph(capsys, tmp_path: Path) -> None:
    p = write(tmp_path, CLUSTER.replace("    - {link: pcie-gen5-x16, from: gpu0, to: cpu0}\n", ""))
    assert one_error_line(capsys, "hw", "show", str(p)) == (
        f"{p}: node.links: expected a connected topology, got a graph in 2 parts: "
        f"n0.cpu0 cannot reach n0.gpu0"
    )
    p = write(tmp_path, CLUSTER)
    assert one_error_line(capsys, "hw", "show", str(p), "--nodes", "2").startswith(
        f"{p}: fabric: expected a connected topology, got a graph in 2 parts: n1.gpu0 cannot reach n0.gpu0"
    )


def test_bad_nodes_flag(capsys) -> None:
    assert one_error_line(capsys, "hw", "show", "h100x8", "--nodes", "0") == (
        "argument --nodes: expected a whole number >= 1, got '0' (see 'moesim hw show --help')"
    )


def test_validate_reports_each_bad_file_and_exits_2(capsys, tmp_path: Path) -> None:
    good = write(tmp_path, CLUSTER, "good.yaml")
    bad = write(tmp_path, CLUSTER.replace("count: 2", "count: -2"), "bad.yaml")
    code, out, err = run(capsys, "hw", "validate", str(good), str(bad))
    assert code == 2
    assert out.startswith(f"ok  {good}: cluster good: 1 node(s), 2 gpu, 1 cpu, 3 links")
    assert err.splitlines() == [
        f"moesim: error: {bad}: node.devices.gpu.count: expected a whole number >= 1, got -2"
    ]


def test_model_errors_through_the_cli(capsys, tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "name: x\nsource: s\nnum_layers: 2\nmoe_layers: all\nhidden_size: 8\n"
        "expert_intermediate_size: 4\nnum_experts: 4\ntop_k: 2\n",
        "m.yaml",
    )
    assert one_error_line(capsys, "model", "show", str(p)) == f"{p}: attention: missing required field"


def test_the_installed_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    p = write(tmp_path, "kind: cluster\nsource: s\nnode: {devices: {gpu: {model: nope}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "moesim", "hw", "show", str(p)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"moesim: error: {p}: node.devices.gpu.model: unknown device 'nope'")
    assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
