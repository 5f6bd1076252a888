"""CPU expert kernels as data: the YAML section, the kernel a run gets, the rows curves, and the
published KTransformers prefill throughputs they are checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.cost.cpu_experts import CpuOptions
from moesim.cost.cpu_kernels import CpuKernel, choose_kernel
from moesim.cost.hybrid import hybrid_prefill
from moesim.errors import UserError
from moesim.specs import load_cluster, load_device_spec, load_model, with_weight_dtype

XEON = "xeon-gold-6454s"

CATALOG = """\
kind: catalog
source: test
devices:
  box-cpu:
    kind: cpu
    source: test
    memory: {capacity: 256 GB, bandwidth: 200 GB/s, source: test}
    compute: {peak: {bf16: 50 TFLOP/s, fp32: 5 TFLOP/s}, source: test}
    kernels:
      source: test
      fast-bf16:
        dtype: bf16
        weight_bits: 16
        serves: [bf16]
        peak: 50 TFLOP/s
        efficiency: [[1, 0.05], [64, 0.5]]
        source: test
"""


def catalog(tmp_path: Path, text: str = CATALOG) -> Path:
    path = tmp_path / "cat.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_cpus_list_their_kernels_in_preference_order() -> None:
    spec = load_device_spec(XEON)
    kinds = ["amx-int8", "amx-bf16", "avx512-q4", "torch-bf16", "torch-fp32", "torch-int8"]
    assert list(spec.cpu_kernels) == kinds
    q4 = spec.cpu_kernels["avx512-q4"]
    assert q4.weight_bits == pytest.approx(4.84) and q4.peak_flops_per_s == pytest.approx(18.0e12)
    assert spec.cpu_kernels["torch-bf16"].impl == "torch" and spec.cpu_kernels["amx-bf16"].impl == ""
    assert "kernels" in spec.sources
    # every built-in kernel's rows curve keeps time monotonic in rows (checked when priced)
    model = load_model("deepseek-v3")
    for name in ("xeon-gold-6454s", "xeon-platinum-8480", "xeon-platinum-8570", "epyc-9654"):
        cpu = load_device_spec(name)
        for k in cpu.cpu_kernels.values():
            CpuKernel.of(k, cpu, model)


@pytest.mark.parametrize(
    ("dtype", "kernel"),
    [("bf16", "amx-bf16"), ("int4", "avx512-q4"), ("fp8", "amx-int8"), ("fp32", "torch-fp32")],
)
def test_kernel_follows_the_expert_dtype(dtype: str, kernel: str) -> None:
    model = with_weight_dtype(load_model("mixtral-8x7b"), dtype)
    assert choose_kernel(load_device_spec(XEON), model, dtype).name == kernel


def test_cpu_without_a_kernel_for_the_dtype_uses_its_scalar_roofline() -> None:
    epyc = load_device_spec("epyc-9654")  # lists only avx512-q4: no AMX, no bf16 kernel
    model = load_model("mixtral-8x7b")
    k = choose_kernel(epyc, model, "bf16")
    assert k.name == "roofline" and k.peak_flops_per_s == epyc.peak_flops("bf16")
    assert k.efficiency == ((1.0, epyc.compute_efficiency),)
    assert choose_kernel(epyc, model, "int4").name == "avx512-q4"
    # a torch table of this CPU prices a torch kernel of the dtype even where none is listed
    assert choose_kernel(epyc, model, "bf16", measured_impl="torch").name == "torch-bf16"


def test_requested_kernel_must_exist(tmp_path: Path) -> None:
    model = load_model("mixtral-8x7b")
    cluster = load_cluster("rtx4090-workstation")
    with pytest.raises(UserError, match=r"--cpu-kernel.*no kernel 'amx-fp4'.*amx-int8, amx-bf16"):
        CostModel(cluster, model, cpu=CpuOptions.of("amx-fp4"))
    cost = CostModel(cluster, model, cpu=CpuOptions.of("avx512-q4"))
    assert cost.cpu.kernel("n0.cpu0").name == "avx512-q4"  # even for a bf16 model
    with pytest.raises(UserError, match="--cpu-numa"):
        CpuOptions.of(numa="everywhere")


def test_amx_tile_rows_curve_keeps_two_to_sixteen_rows_flat() -> None:
    """One 16-row AMX tile costs the same for 2..16 rows; beyond, time grows with rows."""
    spec = load_device_spec(XEON)
    kernel = CpuKernel.of(spec.cpu_kernels["amx-bf16"], spec, load_model("deepseek-v3"))
    rows = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    t = kernel.compute_s(rows)
    np.testing.assert_allclose(t[1:5], t[1], rtol=0.02)
    assert t[0] < t[1] and np.all(np.diff(t[4:]) > 0)
    assert t[-1] / t[-2] == pytest.approx(2.0)  # flat efficiency past one tile: linear in rows


def test_kernel_bytes_use_its_own_weight_bits() -> None:
    spec = load_device_spec(XEON)
    model = load_model("deepseek-v3")  # served in fp8 on GPUs; the CPU streams the kernel's format
    q4 = CpuKernel.of(spec.cpu_kernels["avx512-q4"], spec, model)
    bf16 = CpuKernel.of(spec.cpu_kernels["amx-bf16"], spec, model)
    assert q4.weight_bytes == pytest.approx(model.expert_params * 4.84 / 8)
    assert bf16.weight_bytes / q4.weight_bytes == pytest.approx(16 / 4.84)


def test_kernels_section_errors_name_file_and_field(tmp_path: Path) -> None:
    good = load_device_spec("box-cpu", catalog(tmp_path))
    assert good.cpu_kernels["fast-bf16"].efficiency == ((1.0, 0.05), (64.0, 0.5))
    cases = {
        "weight_bits: 16": ("weight_bits: 0", "kernels.fast-bf16.weight_bits"),
        "[[1, 0.05], [64, 0.5]]": ("[[64, 0.05], [1, 0.5]]", "efficiency[1][0]"),
        "serves: [bf16]": ("serves: [bf17]", "serves[0]"),
        "dtype: bf16": ("dtype: fp4", "kernels.fast-bf16.dtype"),
        "peak: 50 TFLOP/s\n        eff": ("peak: 50 GB/s\n        eff", "kernels.fast-bf16.peak"),
    }
    for old, (new, field) in cases.items():
        bad = catalog(tmp_path, CATALOG.replace(old, new, 1))
        with pytest.raises(UserError) as err:
            load_device_spec("box-cpu", bad)
        assert field in str(err.value) and "cat.yaml" in str(err.value), str(err.value)
    on_gpu = CATALOG.replace("kind: cpu", "kind: gpu")
    with pytest.raises(UserError, match="kernels: expected only on a cpu device"):
        load_device_spec("box-cpu", catalog(tmp_path, on_gpu))


def test_rows_curve_that_speeds_up_with_rows_is_refused(tmp_path: Path) -> None:
    steep = catalog(tmp_path, CATALOG.replace("[[1, 0.05], [64, 0.5]]", "[[1, 0.01], [2, 0.5]]"))
    spec = load_device_spec("box-cpu", steep)
    with pytest.raises(UserError, match=r"kernels\.fast-bf16\.efficiency of box-cpu"):
        CpuKernel.of(spec.cpu_kernels["fast-bf16"], spec, load_model("mixtral-8x7b"))


# Published KTransformers DeepSeek-V3 prefill on 2 x Xeon Gold 6454S + one RTX 4090(D), tokens/s
# (kvcache-ai/ktransformers doc/en/DeepseekR1_V3_tutorial.md @034a116): v0.2.1 Q4_K_M, 8 experts.
Q4_DUAL = {969: 88.2, 1930: 88.5, 3846: 81.9, 7678: 80.0}


def _prefill(kernel: str, numa: str, tokens: int) -> float:
    cost = CostModel(load_cluster("rtx4090-workstation"), load_model("deepseek-v3"),
                     cpu=CpuOptions.of(kernel, numa))
    return hybrid_prefill(cost, "n0.gpu0", "n0.cpu0", tokens).tokens_per_s


def test_q4_prefill_tracks_published_figures_across_prompt_lengths() -> None:
    """Fitted on one socket at 500 tokens (54.21 tokens/s); the dual-socket series is a prediction."""
    assert _prefill("avx512-q4", "one-socket", 500) == pytest.approx(54.21, rel=0.02)
    predicted = {n: _prefill("avx512-q4", "tensor-parallel", n) for n in Q4_DUAL}
    for n, published in Q4_DUAL.items():
        assert predicted[n] == pytest.approx(published, rel=0.10), (n, predicted[n], published)
    # published throughput falls with prompt length; the prediction must not rise with it
    assert predicted[7678] <= predicted[969]


def test_amx_int8_prefill_fit_point_and_no_runaway_with_prompt_length() -> None:
    """v0.3-preview AMX INT8 (255.26 tokens/s at 2K, the fit point); the old roofline rose 2.4x from 1K
    to 8K while the published figure stays within 0.73-1.0x of its peak."""
    two_k = _prefill("amx-int8", "tensor-parallel", 1930)
    assert two_k == pytest.approx(255.26, rel=0.05)
    eight_k = _prefill("amx-int8", "tensor-parallel", 7678)
    assert 0.8 * two_k < eight_k <= two_k
