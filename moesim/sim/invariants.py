"""Runtime checks of the simulator's invariants (docs/invariants.md), on when
``SimConfig.check_invariants`` (``moesim simulate --check-invariants``) is set.

Each check reads what the run recorded and compares it with what the inputs imply; a violation is
a bug in moesim, reported as :class:`InvariantViolation` with every failing case named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from moesim.sim.recorder import Recorder

CHECKS = ("token_conservation", "memory", "causality")
"""Names of the checks, in the order they run (``invariants_checked`` in the summary)."""

SHOWN = 5
"""Failing cases quoted per check (the count says how many there were)."""


class InvariantViolation(RuntimeError):
    """The run broke an invariant: a simulator bug, not bad input."""


def expected_pairs(expert_ids: np.ndarray, steps: Sequence[np.ndarray]) -> np.ndarray:
    """[steps, MoE layers] (token, expert) pairs each step must compute: its rows' ids >= 0."""
    out = np.zeros((len(steps), expert_ids.shape[1]), dtype=np.int64)
    for s, rows in enumerate(steps):
        out[s] = (np.asarray(expert_ids[rows]) >= 0).sum(axis=(0, 2))
    return out


def _report(name: str, failures: list[str]) -> list[str]:
    if not failures:
        return []
    return [f"{name}: {len(failures)} violation(s): " + "; ".join(failures[:SHOWN])]


def token_conservation(rec: Recorder, moe_cols: Sequence[int], expected: np.ndarray) -> list[str]:
    """INV-1: per (step, MoE layer), pairs computed over all devices (GPUs, CPUs, PIMs) = the
    step's valid ids."""
    got = rec.tokens.sum(axis=2)[:, list(moe_cols)]
    bad = np.argwhere(got != expected)
    return _report("token conservation", [
        f"step {s} MoE layer {m}: computed {int(got[s, m])} pairs, the trace routes {int(expected[s, m])}"
        for s, m in bad.tolist()])


def memory(peak_bytes: Mapping[str, float], capacity_bytes: Mapping[str, float],
           overfull: Sequence[tuple[int, int, int, int]]) -> list[str]:
    """INV-2: each GPU's resident bytes (experts or cache capacity + KV) within its memory, and no
    expert cache ever holding more experts than its capacity."""
    failures = [f"{d} holds {peak_bytes[d] / 1e9:.3f} GB of {capacity_bytes[d] / 1e9:.3f} GB"
                for d in peak_bytes if peak_bytes[d] > capacity_bytes[d]]
    failures += [f"MoE layer {m} GPU {g}: cache held {n} experts, capacity {c}" for m, g, n, c in overfull]
    return _report("memory", failures)


def causality(rec: Recorder, arrivals: Sequence[tuple[float, float]]) -> list[str]:
    """INV-3: simulated time never decreases (layer starts in order, a step starts after the
    previous one ends and ends after it starts), and no GPU expert call starts before the weights
    of its experts arrived."""
    failures = []
    starts = rec.layer_start_s.ravel()
    for i in np.flatnonzero(np.diff(starts) < 0).tolist():
        s, col = divmod(i + 1, rec.layer_start_s.shape[1])
        failures.append(f"step {s} layer {col} starts at {starts[i + 1]:.9g} s, before the layer before it")
    for s in np.flatnonzero(rec.step_end_s < rec.step_start_s).tolist():
        failures.append(f"step {s} ends before it starts")
    for s in np.flatnonzero(rec.step_start_s[1:] < rec.step_end_s[:-1]).tolist():
        failures.append(f"step {s + 1} starts before step {s} ends")
    failures += [f"an expert call at {start:.9g} s ran weights that arrived at {arrived:.9g} s"
                 for start, arrived in arrivals if start < arrived]
    return _report("causality", failures)


def check_all(rec: Recorder, moe_cols: Sequence[int], expected: np.ndarray, peak_bytes: Mapping[str, float],
              capacity_bytes: Mapping[str, float], overfull: Sequence[tuple[int, int, int, int]],
              arrivals: Sequence[tuple[float, float]]) -> list[str]:
    """Run every check; raise :class:`InvariantViolation` listing all failures, else return :data:`CHECKS`."""
    failures = (token_conservation(rec, moe_cols, expected) + memory(peak_bytes, capacity_bytes, overfull)
                + causality(rec, arrivals))
    if failures:
        raise InvariantViolation("simulator invariants broken (a moesim bug): " + " | ".join(failures))
    return list(CHECKS)
