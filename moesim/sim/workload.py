"""The steps a run replays: which trace rows form each decode or prefill step, and their context."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.sim.dispatch import owners
from moesim.traces.trace import RoutingTrace


@dataclass(frozen=True)
class Workload:
    """``steps[s]`` are the trace rows of step ``s`` (int64); ``context_tokens[s]`` the mean number
    of keys each of its tokens attends (rounded, so the cost model's memo hits across steps)."""

    phase: str
    steps: tuple[np.ndarray, ...]
    context_tokens: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def tokens(self) -> np.ndarray:
        """[S] tokens per step."""
        return np.array([len(r) for r in self.steps], dtype=np.int64)

    def step_ids(self, trace: RoutingTrace, a: int, b: int, devices: int) -> tuple[np.ndarray, np.ndarray]:
        """Expert ids [S, B, L, K] of steps ``[a, b)`` (-1 past a step's tokens; B its most tokens)
        and the device owning each token [S, B]: consecutive runs of B trace rows (decode) as a
        read-only view of the trace, no copy."""
        rows, ids = self.steps[a:b], trace.expert_ids
        width = max(len(r) for r in rows)
        start, n = int(rows[0][0]) if len(rows[0]) else 0, len(rows) * width
        if (isinstance(ids, np.ndarray) and ids.dtype == np.int16 and ids.flags.c_contiguous and width
                and all(len(r) == width for r in rows) and int(rows[-1][-1]) - start + 1 == n
                and np.array_equal(np.concatenate(rows), np.arange(start, start + n))):
            view = ids[start:start + n].reshape(len(rows), width, *ids.shape[1:])
            view.flags.writeable = False
            return view, np.tile(owners(width, devices), (len(rows), 1))
        out = np.full((len(rows), width, *ids.shape[1:]), -1, dtype=np.int16)
        owner = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            contiguous = len(r) and r[-1] - r[0] + 1 == len(r)
            out[i, :len(r)] = ids[r[0]:r[-1] + 1] if contiguous else ids[r]
            owner[i, :len(r)] = owners(len(r), devices)
        return out, owner

    def sequence_starts(self, trace: RoutingTrace) -> np.ndarray:
        """[S] bool: step s's first row belongs to another sequence (``seq_id``) than step s-1's
        last row (step 0: False, the caches start empty anyway)."""
        seq = np.asarray(trace.seq_id)
        first = np.array([seq[r[0]] if len(r) else -1 for r in self.steps])
        last = np.array([seq[r[-1]] if len(r) else -1 for r in self.steps])
        return np.r_[False, first[1:] != last[:-1]]


def _cycle(groups: list[np.ndarray], steps: int | None) -> list[np.ndarray]:
    """The first ``steps`` groups, replaying from the start when more are asked than there are."""
    if not groups:
        raise UserError("the trace has no rows to replay", field="trace")
    if steps is None:
        return groups
    return [groups[s % len(groups)] for s in range(steps)]


def decode_steps(num_rows: int, batch_size: int, steps: int | None = None) -> list[np.ndarray]:
    """Consecutive batches of ``batch_size`` rows in stream order (the last may be shorter); with
    ``steps``, only the first ``steps`` of them (the replay never builds the rest)."""
    count = -(-num_rows // batch_size)
    count = count if steps is None else min(count, steps)
    return [np.arange(a, min(a + batch_size, num_rows)) for a in range(0, count * batch_size, batch_size)]


def key_steps(keys: np.ndarray) -> list[np.ndarray]:
    """One step per distinct key, in order of first appearance (rows keep their order)."""
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])
    return [groups[g] for g in np.argsort(first, kind="stable")]


def prefill_steps(seq_id: np.ndarray, prompts_per_step: int) -> list[np.ndarray]:
    """Whole prompts (runs of equal ``seq_id``), ``prompts_per_step`` of them per step."""
    n = len(seq_id)
    if n == 0:
        return []
    starts = np.r_[0, np.flatnonzero(np.diff(seq_id)) + 1, n]
    cuts = starts[::prompts_per_step]
    if cuts[-1] != n:
        cuts = np.r_[cuts, n]
    return [np.arange(a, b) for a, b in itertools.pairwise(cuts.tolist())]


def build_workload(trace: RoutingTrace, *, phase: str, batch_size: int, steps: int | None,
                   batch_key: str | None = None) -> Workload:
    """Steps of ``trace`` for ``phase``: decode batches of ``batch_size`` tokens (or one step per
    ``batch_key`` value), or prefill steps of ``batch_size`` whole prompts."""
    n = trace.num_tokens
    if batch_key is not None:
        if batch_key not in trace.extras or np.shape(trace.extras[batch_key]) != (n,):
            raise UserError(f"trace has no per-row key {batch_key!r}", field="batch_key")
        groups = key_steps(np.asarray(trace.extras[batch_key]))
    elif phase == "prefill":
        groups = prefill_steps(np.asarray(trace.seq_id), batch_size)
    else:
        groups = decode_steps(n, batch_size, steps)
    groups = _cycle(groups, steps)
    pos = np.asarray(trace.pos, dtype=np.int64)
    seq = np.asarray(trace.seq_id)
    context = np.empty(len(groups), dtype=np.int64)
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    if phase != "prefill" and len(groups) and sizes.min() > 0:
        # decode: the mean position + 1, rounded half to even as round() does (the integer sums are
        # exact in float, so the means are the same floats)
        sums = np.add.reduceat(pos[np.concatenate(groups)], np.r_[0, np.cumsum(sizes)[:-1]])
        context[:] = np.maximum(1, np.round(sums / sizes + 1))
    else:
        for s, rows in enumerate(groups):
            if phase == "prefill":
                # each prompt's tokens attend on average half of the prompt (causal), at least one key
                lengths = np.bincount(np.unique(seq[rows], return_inverse=True)[1])
                context[s] = max(1, round(float((lengths**2).sum()) / (2 * max(1, int(lengths.sum())))))
            else:
                context[s] = max(1, round(float(pos[rows].mean()) + 1))
    return Workload(phase=phase, steps=tuple(g.astype(np.int64) for g in groups), context_tokens=context)
