"""The Triton MoE kernels compiled for a real GPU, against the PyTorch reference.

Run on a GPU machine in a process where the interpreter is off:
``TRITON_INTERPRET=0 pytest tests/test_kernels_gpu.py -m gpu`` (the interpreter tests in
test_kernels_moe.py switch it on for their process, and Triton decides at import).
"""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:  # find, not import: importing triton here would fix its
    pytest.skip("triton is not installed", allow_module_level=True)  # mode before the interpreter tests

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def fused_moe():
    from moesim.kernels.runtime import interpreter_active

    if interpreter_active():
        pytest.skip("TRITON_INTERPRET is on in this process; run with TRITON_INTERPRET=0 to test "
                    "compiled kernels")
    from moesim.kernels import fused_moe

    return fused_moe


TOLERANCES = [(torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 3e-2)]


@pytest.mark.parametrize(("dtype", "tol"), TOLERANCES)
@pytest.mark.parametrize(("T", "E", "k"), [(1, 8, 2), (37, 64, 8), (300, 16, 1), (2049, 8, 2)])
def test_fused_moe_on_gpu_matches_reference(fused_moe, dtype, tol, T, E, k):
    from moesim.kernels.reference import fused_moe_torch

    gen = torch.Generator().manual_seed(T + E)
    H, F = 256, 192
    x = torch.randn(T, H, generator=gen)
    w1 = torch.randn(E, 2 * F, H, generator=gen) / H**0.5
    w2 = torch.randn(E, H, F, generator=gen) / F**0.5
    ids = torch.rand(T, E, generator=gen).topk(k, dim=1).indices.to(torch.int32)
    wts = torch.softmax(torch.randn(T, k, generator=gen), dim=1)
    want = fused_moe_torch(x.double(), w1.double(), w2.double(), ids.long(), wts.double())
    dev = torch.device("cuda")
    out = fused_moe(x.to(dev, dtype), w1.to(dev, dtype), w2.to(dev, dtype), ids.to(dev), wts.to(dev, dtype))
    err = (out.double().cpu() - want).abs().max() / want.abs().max()
    assert torch.isfinite(out).all() and float(err) < tol
