"""The requests of a run, drawn once from the workload and the seed, and the trace rows that route them.

Every request's tokens are given trace rows before the run, so its routing does not depend on the
schedule: position ``j`` of request ``i`` (its prompt, then its outputs) is routed as trace row
:meth:`RequestSet.rows`. How rows are assigned (docs/serving.md, "Routing"):

- ``sequence``: the trace has sequences (``seq_id``) with both prefill and decode rows. Request i
  replays sequence ``i mod S``: its prompt tokens take that sequence's prefill rows in order, its
  output tokens the sequence's decode rows in order (each list repeats when it is shorter).
- ``stream``: otherwise. Prompts take the trace's prefill rows in stream order, one prompt after the
  other; outputs take its decode rows the same way; a trace without rows of a phase lends all its
  rows to that phase. Both cursors wrap around at the end of the trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.serving.workload import MAX_REQUESTS, MAX_TOKENS, Lengths, WorkloadSpec
from moesim.traces.trace import DECODE, PREFILL, RoutingTrace


@dataclass(frozen=True)
class RowSource:
    """Trace rows per phase: request i's prompt position j is ``prefill_rows[p_base[i] + (p_off[i] + j)
    % p_len[i]]``, its output position j likewise from ``decode_rows``."""

    mode: str
    description: str
    prefill_rows: np.ndarray
    decode_rows: np.ndarray
    p_base: np.ndarray
    p_len: np.ndarray
    p_off: np.ndarray
    d_base: np.ndarray
    d_len: np.ndarray
    d_off: np.ndarray


@dataclass(frozen=True)
class RequestSet:
    """N requests: ``arrival_s`` (NaN for closed-loop clients: set when sent), ``prompt``, ``output``
    and ``hit`` (prefix-cache hit) tokens, and where their routing comes from."""

    arrival_s: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    hit: np.ndarray
    routing: RowSource

    @property
    def count(self) -> int:
        return len(self.prompt)

    def rows(self, req: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Trace rows of positions ``pos`` of requests ``req`` (arrays of equal length)."""
        r = self.routing
        in_prompt = pos < self.prompt[req]
        out = np.empty(len(pos), dtype=np.int64)
        p = req[in_prompt]
        out[in_prompt] = r.prefill_rows[r.p_base[p] + (r.p_off[p] + pos[in_prompt]) % r.p_len[p]]
        d, j = req[~in_prompt], pos[~in_prompt] - self.prompt[req[~in_prompt]]
        out[~in_prompt] = r.decode_rows[r.d_base[d] + (r.d_off[d] + j) % r.d_len[d]]
        return out


def draw_lengths(d: Lengths, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` whole token counts >= 1 from the distribution ``d``."""
    top = d.max if d.max is not None else MAX_TOKENS
    if d.kind == "fixed":
        return np.full(n, d.value, dtype=np.int64)
    if d.kind == "uniform":
        return rng.integers(d.min, top + 1, size=n, dtype=np.int64)
    mu = math.log(d.mean) - d.sigma**2 / 2  # the lognormal's mean is exp(mu + sigma^2 / 2) = mean
    return np.clip(np.rint(rng.lognormal(mu, d.sigma, size=n)), d.min, top).astype(np.int64)


def _read_numbers(path: str, columns: int, what: str, limit: int) -> np.ndarray:
    """Rows of ``columns`` non-negative numbers from a text/CSV file (commas or spaces; ``#``
    comments and one header line allowed); one-line errors naming the file and line."""
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, read line by line (bounded)
    except OSError as e:
        raise UserError(f"cannot read the {what} file ({e.strerror})", file=path) from None
    out: list[list[float]] = []
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                text = line.split("#", 1)[0].replace(",", " ").split()
                if not text:
                    continue
                try:
                    values = [float(t) for t in text]
                except ValueError:
                    if not out and lineno <= 2:
                        continue  # a header line
                    raise UserError(f"line {lineno}: expected {columns} numbers, got {line.strip()!r}",
                                    file=path) from None
                if len(values) != columns or not all(math.isfinite(v) and v >= 0 for v in values):
                    raise UserError(f"line {lineno}: expected {columns} non-negative numbers, got "
                                    f"{line.strip()!r}", file=path)
                out.append(values)
                if len(out) >= limit:
                    break
        except UnicodeDecodeError:
            raise UserError("expected UTF-8 text, got binary data", file=path) from None
    if not out:
        raise UserError(f"expected at least one line of {what}", file=path)
    return np.asarray(out, dtype=float)


def arrival_times(spec: WorkloadSpec, rng: np.random.Generator) -> np.ndarray:
    """Send times (s) of open-loop requests; NaN for closed-loop ones (they are sent on completion)."""
    a, n = spec.arrivals, spec.requests
    if a.kind == "closed-loop":
        return np.full(n, np.nan)
    if a.kind == "timestamps":
        assert a.file is not None
        t = _read_numbers(a.file, 1, "arrival timestamps", n)[:, 0]
        if np.any(np.diff(t) < 0):
            raise UserError("expected non-decreasing timestamps (seconds)", file=a.file)
        return t
    # vLLM's benchmark_serving.get_request: the first request at once, then gamma intervals of mean
    # 1/rate (shape = burstiness; 1 is a Poisson process)
    gaps = rng.gamma(a.burstiness, 1.0 / (a.rate_per_s * a.burstiness), size=n - 1)
    return np.r_[0.0, np.cumsum(gaps)]


def routing_source(trace: RoutingTrace, prompt: np.ndarray, output: np.ndarray) -> RowSource:
    """How each request's positions map to trace rows (module docstring)."""
    n = len(prompt)
    phase, seq = np.asarray(trace.phase), np.asarray(trace.seq_id)
    if trace.num_tokens == 0:
        raise UserError("the trace has no rows to route requests with", field="trace")
    pre, dec = phase == PREFILL, phase == DECODE
    both = np.intersect1d(np.unique(seq[pre]), np.unique(seq[dec]))
    if len(both):
        order = np.argsort(seq, kind="stable")  # rows grouped by sequence, stream order within
        p_rows, d_rows = order[pre[order]], order[dec[order]]
        p_start = np.searchsorted(seq[p_rows], both)
        d_start = np.searchsorted(seq[d_rows], both)
        p_count = np.searchsorted(seq[p_rows], both, side="right") - p_start
        d_count = np.searchsorted(seq[d_rows], both, side="right") - d_start
        pick = np.arange(n) % len(both)
        zero = np.zeros(n, dtype=np.int64)
        return RowSource("sequence", f"each request replays one of the trace's {len(both)} sequences with "
                         "prefill and decode rows (cycled): prompt tokens its prefill rows, output tokens "
                         "its decode rows", p_rows, d_rows, p_start[pick], p_count[pick], zero,
                         d_start[pick], d_count[pick], zero)
    all_rows = np.arange(trace.num_tokens, dtype=np.int64)
    p_rows = np.flatnonzero(pre) if pre.any() else all_rows
    d_rows = np.flatnonzero(dec) if dec.any() else all_rows
    note = []
    if not pre.any():
        note.append("the trace has no prefill rows: prompts use all rows")
    if not dec.any():
        note.append("the trace has no decode rows: outputs use all rows")
    zero = np.zeros(n, dtype=np.int64)
    p_off = np.r_[0, np.cumsum(prompt)[:-1]] % len(p_rows)
    d_off = np.r_[0, np.cumsum(output)[:-1]] % len(d_rows)
    text = "prompts take the trace's prefill rows in stream order, outputs its decode rows in stream order"
    return RowSource("stream", "; ".join([text, *note]), p_rows, d_rows, zero, np.full(n, len(p_rows)), p_off,
                     zero, np.full(n, len(d_rows)), d_off)


def make_requests(spec: WorkloadSpec, trace: RoutingTrace) -> RequestSet:
    """Draw the requests of ``spec`` (its seed) and assign their routing rows from ``trace``."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    arrival = arrival_times(spec, rng)
    n = len(arrival)
    if spec.duration_s is not None:
        if np.isfinite(arrival[0]):
            n = max(1, int(np.searchsorted(arrival, spec.duration_s, side="left")))
        arrival = arrival[:n]
    if spec.lengths_file is not None:
        pairs = _read_numbers(spec.lengths_file, 2, "prompt,output token pairs", MAX_REQUESTS)
        if np.any(pairs < 1) or np.any(pairs > MAX_TOKENS) or np.any(pairs != np.rint(pairs)):
            raise UserError(f"expected whole token counts from 1 to {MAX_TOKENS}", file=spec.lengths_file)
        pick = rng.integers(0, len(pairs), size=n)
        prompt, output = pairs[pick, 0].astype(np.int64), pairs[pick, 1].astype(np.int64)
    else:
        prompt = draw_lengths(spec.prompt_tokens, n, rng)
        output = draw_lengths(spec.output_tokens, n, rng)
    # at least the last prompt token is computed: it yields the first output token
    hit = np.minimum(np.floor(spec.prefix_hit_fraction * prompt).astype(np.int64), prompt - 1)
    return RequestSet(arrival_s=arrival, prompt=prompt, output=output, hit=hit,
                      routing=routing_source(trace, prompt, output))

