"""CostModel: seconds for each op of an MoE layer on each device of a cluster, and for moving bytes.

Compute ops use the roofline of :mod:`moesim.cost.roofline` with the size-dependent efficiency of
:mod:`moesim.cost.efficiency`, or a measured calibration table (``moesim.calibration.tables``)
where one covers the op's shape on that GPU. Communication uses the topology
(:mod:`moesim.cost.collectives`, :mod:`moesim.cost.transfers`). All times are seconds; array
arguments are vectorised. ``sources()`` says, per op, whether results came from a table or the
roofline. See docs/cost.md for the formulas and the named factors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moesim.cost import ops
from moesim.cost.collectives import AllToAllRoutes, directed_hops, link_tables
from moesim.cost.roofline import Roofline
from moesim.cost.transfers import host_of, lowbit_bytes, point_to_point_s
from moesim.errors import UserError
from moesim.specs.hardware import Cluster, Device
from moesim.specs.model import DTYPE_BYTES, MoEModel

Source = Literal["table", "roofline"]
OPS = (
    "expert",
    "cpu_expert",
    "pim_expert",
    "attention",
    "router",
    "permute_combine",
    "shared_expert",
    "dense_ffn",
    "transfer",
    "weight_fetch",
    "all_to_all",
)


# Which calibration tables can answer each op (any one group, all tables of the group needed).
TABLE_OPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "expert": (("grouped_gemm",),),
    "router": (("gemm",),),
    "permute_combine": (("moe_align", "combine"), ("hbm_copy",)),
    "shared_expert": (("gemm",),),
    "dense_ffn": (("gemm",),),
    "transfer": (("p2p",), ("h2d",), ("d2h",)),
    "weight_fetch": (("h2d",),),
}


def _out(x: np.ndarray) -> Any:
    """A Python float for 0-d results, the array otherwise."""
    return float(x) if np.ndim(x) == 0 else x


def _family(name: str) -> set[str]:
    """Model tokens of a GPU name ('NVIDIA H100 80GB HBM3' -> {'h100'}), for matching a
    calibration's device to a hardware profile's device."""
    tokens = re.findall(r"[a-z]*\d+[a-z]*", name.lower())
    return {t for t in tokens if not (t.endswith("gb") or t.startswith(("hbm", "sxm", "pcie", "gen", "nvl")))}


class CostModel:
    """Op times for ``model`` on ``cluster``; ``calibration`` (a ``Calibration``) replaces the
    roofline where its tables cover a shape. Instances memoise routes and count table/roofline use;
    they hold no other state."""

    def __init__(
        self,
        cluster: Cluster,
        model: MoEModel,
        calibration: Any | None = None,
        *,
        infinite_bandwidth: bool = False,
        calibrated_devices: Sequence[str] | None = None,
    ):
        """``calibration``: a ``moesim.calibration.tables.Calibration`` (anything with
        ``time_s(op, **shape)``), or a folder / built-in name to load one from. Its tables apply to
        the GPUs whose model matches ``calibration.device``, or to ``calibrated_devices`` if given."""
        if isinstance(calibration, (str, Path)):
            from moesim.calibration.tables import load_calibration  # lazy: only when asked for

            calibration = load_calibration(calibration)
        self.cluster = cluster
        self.model = model
        self.calibration = calibration
        self.infinite_bandwidth = infinite_bandwidth
        self._explicit_devices = None if calibrated_devices is None else tuple(calibrated_devices)
        by_spec: dict[int, Roofline] = {}
        self._roof: dict[str, Roofline] = {}
        for d in cluster.devices:
            key = id(d.spec)
            if key not in by_spec:
                by_spec[key] = Roofline.of(d.spec)
            self._roof[d.id] = by_spec[key]
        self._link_index, self._link_bw, self._link_names = link_tables(cluster)
        self._routes: dict[tuple[tuple[str, ...], bool], AllToAllRoutes] = {}
        self._expert_const: dict[tuple[int, str | None], tuple[float, float, float, float, int, str]] = {}
        self._counts: dict[str, list[int]] = {op: [0, 0] for op in OPS}
        self._table_devices = self._calibrated_devices()

    # ---------------------------------------------------------------- bookkeeping

    def _calibrated_devices(self) -> frozenset[str]:
        if self.calibration is None:
            return frozenset()
        if self._explicit_devices is not None:
            for d in self._explicit_devices:
                self._device(d, "gpu")
            return frozenset(self._explicit_devices)
        gpus = self.cluster.gpus
        measured = getattr(self.calibration, "device", None)
        if not measured:
            return frozenset(d.id for d in gpus)
        fam = _family(str(measured))
        hits = frozenset(d.id for d in gpus if fam & _family(d.spec.model))
        if not hits:
            models = sorted({d.spec.model for d in gpus})
            raise UserError(
                f"calibration was measured on {measured!r}, expected one of the cluster's GPUs "
                f"({', '.join(models) or 'none'})",
                field="calibration.device",
            )
        return hits

    def _note(self, op: str, source: Source, n: int = 1) -> None:
        self._counts[op][0 if source == "table" else 1] += n

    def _table(self, op: str, table_op: str, device_id: str | None, **shape: Any) -> float | None:
        """Calibration time for ``table_op`` at ``shape`` on ``device_id``, or None (then the caller
        uses the roofline). The caller records the source of the result it returns."""
        if self.calibration is None or (device_id is not None and device_id not in self._table_devices):
            return None
        value = self.calibration.time_s(table_op, **shape)
        return None if value is None else float(value)

    def sources(self) -> dict[str, str]:
        """Per op: ``"table"``, ``"roofline"``, or ``"table+roofline"`` when both were used. Ops not
        used yet report ``"roofline"``, or ``"table"`` when the calibration lists that op."""
        listed = set(getattr(self.calibration, "ops", ()) or ())
        usable = {
            op
            for op, tables in TABLE_OPS.items()
            if self._table_devices and any(all(t in listed for t in group) for group in tables)
        }
        out: dict[str, str] = {}
        for op, (table, roof) in self._counts.items():
            if table and roof:
                out[op] = "table+roofline"
            elif table:
                out[op] = "table"
            elif roof:
                out[op] = "roofline"
            else:
                out[op] = "table" if op in usable else "roofline"
        return out

    def source_counts(self) -> dict[str, dict[str, int]]:
        """How many results of each op came from a table and from the roofline."""
        return {op: {"table": t, "roofline": r} for op, (t, r) in self._counts.items()}

    def with_infinite_bandwidth(self) -> CostModel:
        """The same cost model with every link (NVLink, PCIe, NIC, fabric) costing only its latency."""
        return CostModel(
            self.cluster,
            self.model,
            self.calibration,
            infinite_bandwidth=True,
            calibrated_devices=self._explicit_devices,
        )

    def roofline(self, device_id: str) -> Roofline:
        try:
            return self._roof[device_id]
        except KeyError:
            raise UserError(f"no device {device_id!r} in cluster {self.cluster.name}") from None

    def _device(self, device_id: str, kind: str | None = None) -> Device:
        try:
            dev = self.cluster.device(device_id)
        except KeyError:
            raise UserError(f"no device {device_id!r} in cluster {self.cluster.name}") from None
        if kind is not None and dev.kind != kind:
            raise UserError(f"expected a {kind} device, got {device_id!r} ({dev.kind})")
        return dev

    def op_time_s(
        self, device_id: str, flops: Any, nbytes: Any, dtype: str | None = None, *, launches: Any = 1
    ) -> Any:
        """Roofline time of a generic op (FLOPs, bytes) on ``device_id``."""
        roof = self.roofline(device_id)
        return _out(roof.time_s(flops, nbytes, dtype or self.model.activation_dtype, launches=launches))

    # ---------------------------------------------------------------- experts

    def _expert_dtypes(self, roof: Roofline, dtype: str | None) -> tuple[str, str]:
        weight = dtype or self.model.weight_dtype
        if weight not in DTYPE_BYTES:
            raise UserError(f"expected a weight dtype among {', '.join(DTYPE_BYTES)}, got {weight!r}")
        return weight, roof.compute_dtype(weight, self.model.activation_dtype)

    def expert_compute_s(
        self, device_id: str, tokens_per_expert: np.ndarray, dtype: str | None = None
    ) -> float:
        """One grouped expert call (gate/up GEMM, activation, down GEMM) over the experts of
        ``device_id``; experts with 0 tokens cost nothing, weights are read once per active expert.
        CPU and PIM devices are dispatched to :meth:`cpu_expert_s` / :meth:`pim_expert_s`."""
        kind = self._device(device_id).kind
        if kind == "cpu":
            return self.cpu_expert_s(device_id, tokens_per_expert, dtype)
        if kind == "pim":
            return self.pim_expert_s(device_id, tokens_per_expert, dtype)
        if device_id not in self._table_devices:
            return self._expert_roofline_scalar(device_id, tokens_per_expert, dtype)
        return float(
            self.expert_compute_batch_s([device_id], np.asarray(tokens_per_expert)[None, :], dtype)[0]
        )

    def _expert_constants(
        self, roof: Roofline, dtype: str | None
    ) -> tuple[float, float, float, float, int, str]:
        """(2 x params, weight bytes, activation bytes per token, peak FLOP/s, tile rows, compute
        dtype) of one expert on ``roof``, memoised per (device spec, dtype)."""
        key = (id(roof), dtype)
        const = self._expert_const.get(key)
        if const is None:
            weight, compute = self._expert_dtypes(roof, dtype)
            m = self.model
            act = (
                ops.ffn_activation_elements_per_token(m, m.expert_intermediate_size)
                * DTYPE_BYTES[m.activation_dtype]
            )
            const = (
                2.0 * m.expert_params,
                m.expert_bytes(weight),
                act,
                roof.peak(compute),
                roof.efficiency.tile_rows,
                compute,
            )
            self._expert_const[key] = const
        return const

    def _expert_roofline_scalar(
        self, device_id: str, tokens_per_expert: np.ndarray, dtype: str | None
    ) -> float:
        # The simulator calls this per (step, layer, device): plain floats after two numpy reductions.
        roof = self.roofline(device_id)
        two_p, weight_bytes, act_bytes, peak, tile, _ = self._expert_constants(roof, dtype)
        t = np.asarray(tokens_per_expert, dtype=float)
        n_active = int(np.count_nonzero(t))
        self._counts["expert"][1] += 1
        if n_active == 0:
            return 0.0
        tokens = float(t.sum())
        rows = float((np.ceil(t / tile) * tile).sum()) if tile > 1 else tokens
        flops = two_p * rows
        nbytes = n_active * weight_bytes + tokens * act_bytes
        eff = roof.efficiency
        busy = max(
            flops / (peak * eff.compute.scalar(flops)),
            nbytes / (roof.memory_bandwidth_bytes_per_s * eff.memory.scalar(nbytes)),
        )
        return busy + ops.LAUNCHES["expert"] * roof.launch_overhead_s

    def expert_compute_batch_s(
        self, device_ids: Sequence[str], tokens_per_expert: np.ndarray, dtype: str | None = None
    ) -> np.ndarray:
        """:meth:`expert_compute_s` for several GPUs at once: ``tokens_per_expert`` is [D, E_local]
        (pad with zeros); returns [D] seconds."""
        t = np.asarray(tokens_per_expert, dtype=float)
        if t.ndim != 2 or t.shape[0] != len(device_ids):
            raise ValueError(f"tokens_per_expert must be [{len(device_ids)}, experts], got {t.shape}")
        out = np.zeros(len(device_ids))
        groups: dict[int, list[int]] = {}
        for i, d in enumerate(device_ids):
            groups.setdefault(id(self.roofline(d)), []).append(i)
        for rows in groups.values():
            roof = self.roofline(device_ids[rows[0]])
            weight, compute = self._expert_dtypes(roof, dtype)
            sub = t[rows]
            todo = np.ones(len(rows), dtype=bool)
            if self._table_devices:
                for k, i in enumerate(rows):
                    active = sub[k] > 0
                    n = int(active.sum())
                    if n == 0:
                        continue
                    value = self._table(
                        "expert",
                        "grouped_gemm",
                        device_ids[i],
                        tokens_per_expert=float(sub[k][active].mean()),
                        num_experts=n,
                        hidden=self.model.hidden_size,
                        ffn=self.model.expert_intermediate_size,
                        dtype=weight,
                    )
                    if value is not None:
                        out[i] = value
                        todo[k] = False
                        self._note("expert", "table")
            if todo.any():
                cnt = ops.grouped_expert_counts(self.model, sub[todo], weight, roof.efficiency.tile_rows)
                out[np.asarray(rows)[todo]] = roof.time_s(
                    cnt.flops, cnt.nbytes, compute, launches=cnt.launches
                )
                self._note("expert", "roofline", int(todo.sum()))
        return out

    def expert_times_s(
        self, device_id: str, tokens_per_expert: np.ndarray, dtype: str | None = None
    ) -> np.ndarray:
        """Per-expert seconds, each expert as if run alone with no launch overhead (for planners,
        which add them up); 0 for experts with no tokens."""
        roof = self.roofline(device_id)
        weight, compute = self._expert_dtypes(roof, dtype)
        t = np.asarray(tokens_per_expert, dtype=float)
        out = np.full(t.shape, np.nan)
        if device_id in self._table_devices:
            for n in np.unique(t[t > 0]):
                value = self._table(
                    "expert",
                    "grouped_gemm",
                    device_id,
                    tokens_per_expert=float(n),
                    num_experts=1,
                    hidden=self.model.hidden_size,
                    ffn=self.model.expert_intermediate_size,
                    dtype=weight,
                )
                if value is not None:
                    out[t == n] = value
                    self._note("expert", "table", int(np.sum(t == n)))
        todo = np.isnan(out)
        tile = roof.efficiency.tile_rows
        per = ops.expert_counts(self.model, t[todo], weight, tile)
        out[todo] = roof.time_s(per.flops, per.nbytes, compute, launches=0, rows=per.rows)
        self._note("expert", "roofline", int(todo.sum()))
        return out

    def _sequential_experts_s(
        self, device_id: str, tokens_per_expert: np.ndarray, dtype: str | None, op: str
    ) -> float:
        # CPU (Fiddler) and PIM run one expert after another: each expert streams its own weights,
        # so size curves apply per expert and the times add up.
        roof = self.roofline(device_id)
        weight, compute = self._expert_dtypes(roof, dtype)
        t = np.asarray(tokens_per_expert, dtype=float)
        per = ops.expert_counts(self.model, t, weight, roof.efficiency.tile_rows)
        self._note(op, "roofline")
        return float(np.sum(roof.time_s(per.flops, per.nbytes, compute, launches=1, rows=per.rows)))

    def cpu_expert_s(self, cpu_id: str, tokens_per_expert: np.ndarray, dtype: str | None = None) -> float:
        """Experts executed on a CPU from its DDR (Fiddler): per expert, max(FLOPs at the AMX/AVX
        rate for its row count, weight + activation bytes at DDR bandwidth), summed."""
        self._device(cpu_id, "cpu")
        return self._sequential_experts_s(cpu_id, tokens_per_expert, dtype, "cpu_expert")

    def pim_expert_s(self, pim_id: str, tokens_per_expert: np.ndarray, dtype: str | None = None) -> float:
        """Experts executed near memory (Duplex Logic-PIM): bytes at the internal bandwidth."""
        self._device(pim_id, "pim")
        return self._sequential_experts_s(pim_id, tokens_per_expert, dtype, "pim_expert")

    # ---------------------------------------------------------------- dense ops

    def _roof_op(self, op: str, device_id: str, cnt: ops.OpCount, dtype: str) -> Any:
        roof = self.roofline(device_id)
        self._note(op, "roofline")
        return _out(roof.time_s(cnt.flops, cnt.nbytes, dtype, launches=cnt.launches))

    def _ffn_s(self, op: str, device_id: str, tokens: Any, width: int, count: int, weight_dtype: str) -> Any:
        """Dense FFNs: two ``gemm`` table lookups (gate/up, down) + the activation's roofline when
        calibrated, else the roofline of the whole FFN."""
        roof = self.roofline(device_id)
        t = np.asarray(tokens, dtype=float)
        compute = roof.compute_dtype(weight_dtype, self.model.activation_dtype)
        if device_id in self._table_devices and t.ndim == 0 and t > 0 and count == 1:
            h = self.model.hidden_size
            up = self._table(
                op,
                "gemm",
                device_id,
                m=int(t),
                n=(2 if self.model.gated else 1) * width,
                k=h,
                dtype=weight_dtype,
            )
            down = (
                self._table(op, "gemm", device_id, m=int(t), n=h, k=width, dtype=weight_dtype)
                if up is not None
                else None
            )
            if up is not None and down is not None:
                act = roof.time_s(0.0, 3 * t * width * DTYPE_BYTES[self.model.activation_dtype], compute)
                self._note(op, "table")
                return up + down + float(act)
        cnt = ops.dense_ffn_counts(self.model, t, width, weight_dtype, count)
        return self._roof_op(op, device_id, cnt, compute)

    def attention_s(self, device_id: str, tokens: Any, context_tokens: Any, phase: str = "decode") -> Any:
        """Attention of ``tokens`` query tokens (GQA or MLA), each attending ``context_tokens`` keys
        on average; decode reads the KV cache, prefill computes it."""
        cnt = ops.attention_counts(self.model, tokens, context_tokens, phase)
        return self._roof_op("attention", device_id, cnt, self.model.activation_dtype)

    def router_s(self, device_id: str, tokens: Any) -> Any:
        """Gate GEMM and top-k for ``tokens`` tokens (the ``gemm`` table's [tokens, H] x [H, E] when
        calibrated)."""
        t = np.asarray(tokens, dtype=float)
        if device_id in self._table_devices and t.ndim == 0 and t > 0:
            m = self.model
            value = self._table(
                "router",
                "gemm",
                device_id,
                m=int(t),
                n=m.num_experts,
                k=m.hidden_size,
                dtype=m.activation_dtype,
            )
            if value is not None:
                self._note("router", "table")
                return value
        cnt = ops.router_counts(self.model, t)
        return self._roof_op("router", device_id, cnt, self.model.activation_dtype)

    def permute_combine_s(self, device_id: str, tokens: Any) -> Any:
        """Permute ``tokens`` tokens by expert before the expert GEMMs and combine after."""
        t = np.asarray(tokens, dtype=float)
        if device_id in self._table_devices and t.ndim == 0 and t > 0:
            m = self.model
            # The Triton kernels permute by index (moe_align) and gather rows inside the GEMM, then
            # combine; without those tables, a device copy of the permuted activations.
            align = self._table(
                "permute_combine",
                "moe_align",
                device_id,
                tokens=int(t),
                num_experts=m.num_experts,
                top_k=m.top_k,
            )
            combine = (
                self._table(
                    "permute_combine",
                    "combine",
                    device_id,
                    tokens=int(t),
                    top_k=m.top_k,
                    hidden=m.hidden_size,
                    dtype=m.activation_dtype,
                )
                if align is not None
                else None
            )
            if align is not None and combine is not None:
                self._note("permute_combine", "table")
                return align + combine
            moved = m.top_k * t * m.activation_bytes_per_token  # the k copies of each token
            value = self._table("permute_combine", "hbm_copy", device_id, bytes=float(moved))
            if value is not None:
                self._note("permute_combine", "table")
                return 2.0 * value  # permute before the experts, un-permute after
        cnt = ops.permute_combine_counts(self.model, t)
        return self._roof_op("permute_combine", device_id, cnt, self.model.activation_dtype)

    def shared_expert_s(self, device_id: str, tokens: Any) -> Any:
        """The model's shared experts on ``tokens`` tokens (0 when it has none)."""
        m = self.model
        if m.num_shared_experts == 0 or m.shared_expert_intermediate_size == 0:
            return _out(np.zeros_like(np.asarray(tokens, dtype=float)))
        return self._ffn_s(
            "shared_expert",
            device_id,
            tokens,
            m.shared_expert_intermediate_size,
            m.num_shared_experts,
            m.weight_dtype,
        )

    def dense_ffn_s(self, device_id: str, tokens: Any) -> Any:
        """The FFN of a non-MoE layer on ``tokens`` tokens (0 when every layer is MoE)."""
        m = self.model
        if m.dense_intermediate_size == 0:
            return _out(np.zeros_like(np.asarray(tokens, dtype=float)))
        return self._ffn_s("dense_ffn", device_id, tokens, m.dense_intermediate_size, 1, m.activation_dtype)

    # ---------------------------------------------------------------- communication

    def transfer_s(self, src: str, dst: str, nbytes: Any, *, pinned: bool = True) -> Any:
        """Path latency + bytes / bottleneck bandwidth from ``src`` to ``dst`` (a ``p2p``, ``h2d`` or
        ``d2h`` table when calibrated)."""
        a, b = self._device(src), self._device(dst)
        nb = np.asarray(nbytes, dtype=float)
        if not self.infinite_bandwidth and nb.ndim == 0 and nb > 0 and src != dst:
            value = None
            if a.kind == "gpu" and b.kind == "gpu" and a.node == b.node:
                value = self._table("transfer", "p2p", dst, bytes=float(nb))
            elif a.kind == "cpu" and b.kind == "gpu":
                value = self._table("transfer", "h2d", dst, bytes=float(nb), pinned=pinned)
            elif a.kind == "gpu" and b.kind == "cpu":
                value = self._table("transfer", "d2h", src, bytes=float(nb), pinned=pinned)
            if value is not None:
                self._note("transfer", "table")
                return value
        self._note("transfer", "roofline")
        return _out(
            point_to_point_s(
                self.cluster, src, dst, nb, pinned=pinned, infinite_bandwidth=self.infinite_bandwidth
            )
        )

    def weight_fetch_s(
        self,
        dst_gpu: str,
        nbytes: Any,
        *,
        lowbit_dtype: str | None = None,
        pinned: bool = True,
        src: str | None = None,
    ) -> Any:
        """Host -> GPU fetch of ``nbytes`` of expert weights (given in the model's weight dtype)
        over PCIe from ``src`` (default: the GPU's host CPU); ``lowbit_dtype`` sends them in that
        precision instead (HOBBIT)."""
        self._device(dst_gpu, "gpu")
        host = src or host_of(self.cluster, dst_gpu)
        nb = lowbit_bytes(nbytes, self.model.weight_dtype, lowbit_dtype)
        if not self.infinite_bandwidth and nb.ndim == 0 and nb > 0:
            value = self._table("weight_fetch", "h2d", dst_gpu, bytes=float(nb), pinned=pinned)
            if value is not None:
                self._note("weight_fetch", "table")
                return value
        self._note("weight_fetch", "roofline")
        return _out(
            point_to_point_s(
                self.cluster, host, dst_gpu, nb, pinned=pinned, infinite_bandwidth=self.infinite_bandwidth
            )
        )

    def routes(self, device_ids: Sequence[str], *, hierarchical: bool = False) -> AllToAllRoutes:
        """The (memoised) pair->link incidence of an all-to-all among ``device_ids``."""
        key = (tuple(device_ids), hierarchical)
        r = self._routes.get(key)
        if r is None:
            for d in key[0]:
                self._device(d)
            r = AllToAllRoutes.build(self.cluster, key[0], hierarchical=hierarchical)
            self._routes[key] = r
        return r

    def all_to_all_s(
        self,
        device_ids: Sequence[str],
        bytes_matrix: np.ndarray,
        *,
        hierarchical: bool = False,
        node_bytes: np.ndarray | None = None,
    ) -> Any:
        """All-to-all with ``bytes_matrix[i, j]`` bytes from ``device_ids[i]`` to ``device_ids[j]``:
        max over link directions of load / bandwidth + the longest path latency used. A batch
        [S, G, G] gives [S] seconds."""
        r = self.routes(device_ids, hierarchical=hierarchical)
        b = np.asarray(bytes_matrix, dtype=float)
        latency = r.latency_s(b)
        self._note("all_to_all", "roofline")
        if self.infinite_bandwidth:
            t = latency
        else:
            loads = r.link_loads(b, node_bytes).reshape(-1, r.num_links)
            t = np.max(loads / self._link_bw[None, :], axis=1) + latency
        return t if b.ndim == 3 else float(t[0])

    def link_bytes(
        self,
        device_ids: Sequence[str],
        bytes_matrix: np.ndarray,
        *,
        hierarchical: bool = False,
        node_bytes: np.ndarray | None = None,
    ) -> dict[tuple[str, str], float]:
        """Bytes on each link direction ``(from, to)`` that an all-to-all puts there (nonzero only)."""
        r = self.routes(device_ids, hierarchical=hierarchical)
        loads = r.link_loads(np.asarray(bytes_matrix, dtype=float), node_bytes)
        if loads.ndim == 2:
            loads = loads.sum(axis=0)
        return {self._link_names[i]: float(loads[i]) for i in np.flatnonzero(loads)}

    def directed_links(self) -> list[tuple[tuple[str, str], float, float]]:
        """Every link direction as ``((from, to), effective bytes/s, latency s)``, for simulators
        that model links as resources."""
        lat = np.repeat([ln.spec.latency_s for ln in self.cluster.links], 2)
        return [
            (n, float(bw), float(la)) for n, bw, la in zip(self._link_names, self._link_bw, lat, strict=True)
        ]

    def path_links(self, src: str, dst: str) -> list[tuple[str, str]]:
        """The link directions a transfer ``src -> dst`` crosses, in order."""
        return [self._link_names[h] for h in directed_hops(self.cluster, src, dst, self._link_index)]
