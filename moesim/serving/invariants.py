"""Checks of one serving run (``--check-invariants`` with ``--workload``; docs/invariants.md INV-8..11):
every sent request finished or was reported with its reason, a finished one emitted exactly its output
tokens, its times are ordered and its TTFT covers its own prefill, and every KV block came back.

Little's law and the load curves (INV-10, INV-12, INV-13) are properties of long or repeated runs, not
of one run, and stay in the tests.
"""

from __future__ import annotations

import numpy as np

from moesim.serving.metrics import ServeResult
from moesim.sim.invariants import InvariantViolation

CHECKS = ("every request finished or reported", "tokens out = tokens asked", "times ordered",
          "TTFT >= own prefill", "KV blocks returned")


def failures(result: ServeResult) -> list[str]:
    """What ``result`` breaks, one line per broken check (empty when all hold)."""
    r, out = result.requests, []
    sent = np.isfinite(r["arrival_s"])
    done = r["finished"]
    reported = np.zeros(len(done), dtype=bool)
    reported[np.fromiter(result.unfinished, np.int64, len(result.unfinished))] = True
    lost = np.flatnonzero(sent & (done == reported))
    if len(lost):
        out.append(f"{len(lost)} requests neither finished nor reported, or both (first: {int(lost[0])})")
    short = np.flatnonzero(done & (r["emitted_tokens"] != r["output_tokens"]))
    if len(short):
        i = int(short[0])
        out.append(f"{len(short)} finished requests emitted other than their output tokens (request {i}: "
                   f"{int(r['emitted_tokens'][i])} of {int(r['output_tokens'][i])})")
    a, f, e = r["arrival_s"][done], r["first_token_s"][done], r["finish_s"][done]
    if not ((a <= f) & (f <= e)).all():
        out.append("a finished request's first token precedes its arrival or follows its finish")
    slack = 1e-9 * np.maximum(1.0, f)
    if ((f - a) + slack < r["prefill_s"][done]).any():
        out.append("a request's TTFT is shorter than its own prefill steps")
    left = [i["kv_blocks_left_in_use"] for i in result.info["instances"]]
    if any(left):
        out.append(f"KV blocks still in use after the run: {left}")
    return out


def check(result: ServeResult) -> tuple[str, ...]:
    """Raise :class:`InvariantViolation` listing every broken check, else return :data:`CHECKS`."""
    broken = failures(result)
    if broken:
        raise InvariantViolation("serving invariants broken (a moesim bug): " + " | ".join(broken))
    return CHECKS
