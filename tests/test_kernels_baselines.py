"""The PyTorch baselines and operand builders the GPU benchmarks use, checked on the CPU.

A speed-up is only meaningful if the baseline computes the same function: the per-expert loop
and the ``torch._grouped_mm`` path are compared with the definition here.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moesim.kernels.bench import MoECase, grouped_mm_moe, moe_flops_bytes, random_routing  # noqa: E402
from moesim.kernels.reference import fused_moe_torch  # noqa: E402
from tests.kernel_reference import fused_moe_reference  # noqa: E402


def _operands(T=13, H=32, F=16, E=6, K=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w1 = (torch.randn(E, 2 * F, H, generator=g) / H**0.5).to(dtype)
    w2 = (torch.randn(E, H, F, generator=g) / F**0.5).to(dtype)
    ids, weights = random_routing(T, E, K, generator=g, device="cpu")
    return x, w1, w2, ids, weights.to(dtype)


def test_torch_loop_baseline_matches_definition():
    x, w1, w2, ids, w = _operands(K=3)
    ref = fused_moe_reference(x, w1, w2, ids, w, dtype=torch.float64)
    assert float((fused_moe_torch(x, w1, w2, ids, w).double() - ref).abs().max()) < 1e-5


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="this torch has no _grouped_mm")
def test_grouped_mm_baseline_matches_definition():
    x, w1, w2, ids, w = _operands(dtype=torch.bfloat16, seed=1)
    try:
        out = grouped_mm_moe(x, w1, w2, ids, w)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._grouped_mm unsupported here: {e}")
    ref = fused_moe_reference(x, w1, w2, ids, w, dtype=torch.float64)
    assert float((out.double() - ref).abs().max() / ref.abs().max()) < 3e-2


def test_random_routing_picks_distinct_experts_and_normalised_weights():
    g = torch.Generator().manual_seed(0)
    ids, w = random_routing(50, 16, 4, generator=g, device="cpu")
    assert ids.shape == (50, 4) and ids.dtype == torch.int32
    assert all(len(set(row.tolist())) == 4 for row in ids)
    assert torch.allclose(w.sum(dim=1), torch.ones(50))


def test_moe_case_redraws_routing_in_place():
    case = MoECase(9, 8, 2, 16, 8, torch.float32, "cpu", routings=3)
    ptr = case.ids.data_ptr()
    seen = set()
    for i in range(3):
        case.next_routing(i)
        seen.add(tuple(case.ids.flatten().tolist()))
        assert case.ids.data_ptr() == ptr  # a captured CUDA graph keeps reading the same buffer
    assert len(seen) > 1
    assert 1 <= case.active_experts <= 8
    assert (case.w1 != 0).float().mean() > 0.99  # random weights, never zeros (they run faster)


def test_flops_and_bytes_count():
    flops, nbytes = moe_flops_bytes(tokens=4, active_experts=2, top_k=2, hidden=10, ffn=5, elem_bytes=2)
    assert flops == 6 * 4 * 2 * 10 * 5
    assert nbytes == (3 * 2 * 10 * 5 + 2 * 4 * 10) * 2
