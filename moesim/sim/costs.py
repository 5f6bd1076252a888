"""The cost interface the simulator runs on, and the memo its offloaded processes ask through.

:class:`SimCost` is what the engine calls on a cost model (``moesim.cost.CostModel`` is one);
tests may pass any object with these methods. :class:`OffloadCosts` remembers the answers of the
few shapes an offloaded run asks over and over (a fetch per GPU, a CPU call per token row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel


class SimCost(Protocol):
    """Durations and link loads the simulator asks for (seconds, bytes)."""

    cluster: Cluster
    model: MoEModel

    def attention_s(self, device_id: str, tokens: Any, context_tokens: Any, phase: str = ...) -> Any: ...
    def router_s(self, device_id: str, tokens: Any) -> Any: ...
    def permute_combine_s(self, device_id: str, tokens: Any) -> Any: ...
    def shared_expert_s(self, device_id: str, tokens: Any) -> Any: ...
    def dense_ffn_s(self, device_id: str, tokens: Any) -> Any: ...
    def expert_compute_s(self, device_id: str, tokens_per_expert: np.ndarray) -> float: ...
    def expert_compute_batch_s(self, device_ids: Sequence[str],
                               tokens_per_expert: np.ndarray) -> np.ndarray: ...
    def cpu_expert_s(self, cpu_id: str, tokens_per_expert: np.ndarray) -> float: ...
    def pim_expert_s(self, pim_id: str, tokens_per_expert: np.ndarray) -> float: ...
    def all_to_all_s(self, device_ids: Sequence[str], bytes_matrix: np.ndarray) -> Any: ...
    def link_bytes(self, device_ids: Sequence[str],
                   bytes_matrix: np.ndarray) -> dict[tuple[str, str], float]: ...
    def link_loads_each(self, device_ids: Sequence[str],
                        bytes_matrices: np.ndarray) -> tuple[list[tuple[str, str]], np.ndarray]: ...
    def directed_links(self) -> list[tuple[tuple[str, str], float, float]]: ...
    def path_links(self, src: str, dst: str) -> list[tuple[str, str]]: ...
    def transfer_s(self, src: str, dst: str, nbytes: Any) -> Any: ...
    def weight_fetch_s(self, dst_gpu: str, nbytes: Any, *, lowbit_dtype: str | None = None) -> Any: ...
    def sources(self) -> dict[str, str]: ...


class OffloadCosts:
    """Memoised cost answers for the offloaded processes, keyed by their arguments."""

    def __init__(self, cost: SimCost, expert_bytes: float):
        self.cost = cost
        self.expert_bytes = expert_bytes
        """One expert's weights in the model's dtype (what ``weight_fetch_s`` is given)."""
        self._memo: dict[tuple, Any] = {}

    def _get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def fetch_s(self, gpu: str, lowbit_dtype: str | None) -> float:
        """Seconds to copy one expert's weights (in ``lowbit_dtype`` when given) from host to ``gpu``."""
        return self._get(("fetch", gpu, lowbit_dtype), lambda: float(
            self.cost.weight_fetch_s(gpu, self.expert_bytes, lowbit_dtype=lowbit_dtype)))

    def path(self, src: str, dst: str) -> list[tuple[str, str]]:
        return self._get(("path", src, dst), lambda: self.cost.path_links(src, dst))

    def transfer_s(self, src: str, dst: str, nbytes: float) -> float:
        return self._get(("xfer", src, dst, nbytes), lambda: float(self.cost.transfer_s(src, dst, nbytes)))

    def gpu_experts_s(self, gpu: str, tokens: np.ndarray) -> float:
        """One grouped call on ``gpu`` over experts with ``tokens`` each."""
        return self._get(("gpu", gpu, tuple(tokens.tolist())),
                         lambda: float(self.cost.expert_compute_s(gpu, tokens)))

    def gpu_call_s(self, gpu: str, tokens: tuple[float, ...]) -> float:
        """:meth:`gpu_experts_s` of the experts' ``tokens`` given as a tuple (no array unless new)."""
        value = self._memo.get(("gpu", gpu, tokens))
        return value if value is not None else self.gpu_experts_s(gpu, np.array(tokens, dtype=float))

    def cpu_experts_s(self, cpu: str, tokens: np.ndarray) -> float:
        return self._get(("cpu", cpu, tuple(tokens.tolist())),
                         lambda: float(self.cost.cpu_expert_s(cpu, tokens)))

    def pim_experts_s(self, pim: str, tokens: np.ndarray) -> float:
        return self._get(("pim", pim, tuple(tokens.tolist())),
                         lambda: float(self.cost.pim_expert_s(pim, tokens)))
