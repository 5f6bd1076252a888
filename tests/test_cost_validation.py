"""The cost model against published measurements: DeepEP's low-latency all-to-all (deepseek-ai/DeepEP
docs/legacy.md @0297fc80, low-latency kernel table) on H800 + CX7 400G nodes, 128 tokens per GPU,
hidden 7168, top-8, FP8 dispatch (7168 B + 56 fp32 scales per token copy), BF16 combine. The model
runs on h100x8x4 nodes (same NIC, one per GPU); it leaves out DeepEP's software overheads, so it
should come out somewhat faster, within 2x."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.specs import load_cluster, load_model

# (EP size, dispatch latency s, combine latency s): deepseek-ai/DeepEP docs/legacy.md @0297fc80
DEEPEP_LOW_LATENCY = [(16, 118e-6, 195e-6), (32, 155e-6, 273e-6), (64, 173e-6, 314e-6)]
DISPATCH_BYTES = 7168 + 7168 // 128 * 4
COMBINE_BYTES = 7168 * 2


@pytest.mark.parametrize(("ep", "dispatch_s", "combine_s"), DEEPEP_LOW_LATENCY)
def test_low_latency_all_to_all_within_2x_of_deepep(ep: int, dispatch_s: float, combine_s: float) -> None:
    cluster = load_cluster("h100x8x4", nodes=ep // 8)
    cost = CostModel(cluster, load_model("deepseek-v3"))
    ids = [d.id for d in cluster.gpus]
    copies_per_pair = 128 * 8 / ep  # uniform routing: each token's 8 experts spread over all ranks
    for per_copy, measured in ((DISPATCH_BYTES, dispatch_s), (COMBINE_BYTES, combine_s)):
        b = np.full((ep, ep), copies_per_pair * per_copy)
        np.fill_diagonal(b, 0)
        ratio = cost.all_to_all_s(ids, b) / measured
        assert 0.5 < ratio < 2.0, ratio
