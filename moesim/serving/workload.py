"""The workload a serving run replays: how requests arrive and how long their prompts and outputs are.

A :class:`WorkloadSpec` is read from a YAML file (``moesim simulate --workload FILE``, field by field
in docs/serving.md) or built in code; flags override single fields (:meth:`WorkloadSpec.with_`).
Files named in it (arrival timestamps, length pairs) are read relative to the workload file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.resources import builtin_dir, builtin_names
from moesim.specs.yaml_fields import Fields, read_yaml

ARRIVALS = ("poisson", "closed-loop", "timestamps")
LENGTHS = ("fixed", "uniform", "lognormal")
MAX_REQUESTS = 10_000_000
"""Bound on a workload's requests (each keeps a few numbers for the per-request results)."""
MAX_TOKENS = 10_000_000
"""Bound on one prompt or output (tokens)."""
FLAGS = {"arrivals.rate_per_s": "--arrival-rate", "arrivals.concurrency": "--concurrency",
         "requests": "--requests", "duration_s": "--duration", "seed": "--seed"}
"""The ``moesim simulate`` flag of each field a flag can override (for error messages)."""


@dataclass(frozen=True)
class Arrivals:
    """When requests arrive: ``poisson`` at ``rate_per_s`` (gamma intervals with ``burstiness`` != 1,
    as vLLM's benchmark), ``closed-loop`` with ``concurrency`` clients each sending its next request
    when the previous one finishes, or ``timestamps`` read from ``file`` (seconds, one per line)."""

    kind: str = "poisson"
    rate_per_s: float = 1.0
    burstiness: float = 1.0
    concurrency: int = 1
    file: str | None = None


@dataclass(frozen=True)
class Lengths:
    """A token-count distribution: ``fixed`` (``value``), ``uniform`` over [``min``, ``max``],
    ``lognormal`` with mean ``mean`` and log-space standard deviation ``sigma`` clipped to
    [``min``, ``max``]; every draw is a whole number of tokens >= 1."""

    kind: str = "fixed"
    value: int = 128
    min: int = 1
    max: int | None = None
    mean: float = 128.0
    sigma: float = 0.5


@dataclass(frozen=True)
class Speculative:
    """Speculative decoding / MTP: ``draft_tokens`` proposed per decode step, each accepted with
    probability ``acceptance_rate`` while all before it were (0 draft tokens: plain decoding)."""

    draft_tokens: int = 0
    acceptance_rate: float = 0.0


@dataclass(frozen=True)
class WorkloadSpec:
    """Requests to send (docs/serving.md lists every field with its unit and default)."""

    arrivals: Arrivals = field(default_factory=Arrivals)
    prompt_tokens: Lengths = field(default_factory=lambda: Lengths(value=512))
    output_tokens: Lengths = field(default_factory=lambda: Lengths(value=128))
    lengths_file: str | None = None
    """CSV of ``prompt_tokens,output_tokens`` pairs drawn with replacement (replaces both distributions)."""
    prefix_hit_fraction: float = 0.0
    """Share of each prompt found in the prefix cache: its KV exists, its prefill compute is skipped."""
    speculative: Speculative = field(default_factory=Speculative)
    requests: int = 100
    duration_s: float | None = None
    """Stop sending requests after this many seconds (the ones sent still finish)."""
    seed: int = 0
    name: str = "workload"

    def with_(self, **overrides: Any) -> WorkloadSpec:
        """A copy with flag values (``arrival_rate``, ``concurrency``, ``requests``, ``duration_s``,
        ``seed``) applied where not None; errors name the flag."""
        arr, top = self.arrivals, {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "arrival_rate":
                arr = replace(arr, kind="poisson", rate_per_s=float(value))
            elif key == "concurrency":
                arr = replace(arr, kind="closed-loop", concurrency=int(value))
            elif key in {f.name for f in fields(self)}:
                top[key] = value
            else:
                raise TypeError(f"unknown workload override {key!r}")
        spec = replace(self, arrivals=arr, **top)
        try:
            spec.check()
        except UserError as e:
            raise UserError(e.message, field=FLAGS.get(e.field or "", e.field)) from None
        return spec

    def check(self, file: str | None = None) -> None:
        """Raise :class:`UserError` for a value out of range (flags and code-built specs)."""
        a = self.arrivals

        def need(ok: bool, fld: str, msg: str) -> None:
            if not ok:
                raise UserError(msg, file=file, field=fld)

        need(a.kind in ARRIVALS, "arrivals.kind", f"expected one of {', '.join(ARRIVALS)}, got {a.kind!r}")
        need(math.isfinite(a.rate_per_s) and a.rate_per_s > 0, "arrivals.rate_per_s",
             f"expected a rate > 0 requests/s, got {a.rate_per_s}")
        need(math.isfinite(a.burstiness) and a.burstiness > 0, "arrivals.burstiness",
             f"expected a burstiness > 0, got {a.burstiness}")
        need(1 <= a.concurrency <= MAX_REQUESTS, "arrivals.concurrency",
             f"expected 1 to {MAX_REQUESTS} clients, got {a.concurrency}")
        need(a.kind != "timestamps" or a.file is not None, "arrivals.file", "expected a file of timestamps")
        need(1 <= self.requests <= MAX_REQUESTS, "requests", f"expected 1 to {MAX_REQUESTS} requests, "
             f"got {self.requests}")
        d_s = self.duration_s
        need(d_s is None or (math.isfinite(d_s) and d_s > 0), "duration_s",
             f"expected a duration > 0 s, got {d_s}")
        need(0 <= self.prefix_hit_fraction < 1, "prefix_hit_fraction",
             f"expected a fraction in [0, 1), got {self.prefix_hit_fraction}")
        s = self.speculative
        need(0 <= s.draft_tokens <= 64, "speculative.draft_tokens", f"expected 0 to 64 draft tokens, "
             f"got {s.draft_tokens}")
        need(0 <= s.acceptance_rate < 1, "speculative.acceptance_rate",
             f"expected a probability in [0, 1), got {s.acceptance_rate}")
        for name, d in (("prompt_tokens", self.prompt_tokens), ("output_tokens", self.output_tokens)):
            need(d.kind in LENGTHS, f"{name}.kind", f"expected one of {', '.join(LENGTHS)}, got {d.kind!r}")
            top = d.max if d.max is not None else MAX_TOKENS
            need(1 <= d.min <= top <= MAX_TOKENS, f"{name}.max",
                 f"expected 1 <= min <= max <= {MAX_TOKENS} tokens, got min {d.min}, max {d.max}")
            need(1 <= d.value <= MAX_TOKENS, f"{name}.value",
                 f"expected 1 to {MAX_TOKENS} tokens, got {d.value}")
            need(d.kind != "uniform" or d.max is not None, f"{name}.max", "a uniform length needs a max")
            need(math.isfinite(d.mean) and d.mean >= 1, f"{name}.mean",
                 f"expected a mean >= 1 token, got {d.mean}")
            need(math.isfinite(d.sigma) and 0 <= d.sigma <= 5, f"{name}.sigma",
                 f"expected a log-space sigma in [0, 5], got {d.sigma}")


def _number(f: Fields, key: str, default: float | None, *, minimum: float | None = None,
            below: float | None = None) -> float | None:
    """A float field (int or float in the file) with an optional range."""
    value = f.raw(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise f.error(key, f"expected a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise f.error(key, f"expected a number >= {minimum}, got {value}")
    if below is not None and value >= below:
        raise f.error(key, f"expected a number below {below}, got {value}")
    return float(value)


def _lengths(f: Fields, default: Lengths) -> Lengths:
    f.check_keys({"kind", "value", "min", "max", "mean", "sigma"})
    kind = f.str("kind", default.kind, choices=LENGTHS)
    return Lengths(kind=kind, value=f.int("value", default.value, minimum=1), min=f.int("min", 1, minimum=1),
                   max=f.optional_int("max", minimum=1),
                   mean=_number(f, "mean", default.mean, minimum=1) or default.mean,
                   sigma=_number(f, "sigma", default.sigma, minimum=0) or 0.0)


def _relative(f: Fields, key: str, base: Path) -> str | None:
    text = f.raw(key, None)
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip():
        raise f.error(key, f"expected a file name, got {text!r}")
    path = Path(text)
    return str(path if path.is_absolute() else base / path)


def parse_workload(data: dict[str, Any], file: str, base: Path, name: str) -> WorkloadSpec:
    """A spec from a parsed YAML mapping (``base``: the folder relative paths start from)."""
    top = Fields(data, "", {}, file)
    top.check_keys({"kind", "name", "arrivals", "prompt_tokens", "output_tokens", "lengths_file",
                    "prefix_hit_fraction", "speculative", "requests", "duration_s", "seed", "description"})
    if "kind" in top and top.str("kind") != "workload":
        raise top.error("kind", f"expected 'workload', got {top.raw('kind')!r}")
    d = WorkloadSpec()
    a = top.mapping("arrivals", None)
    a.check_keys({"kind", "rate_per_s", "burstiness", "concurrency", "file"})
    arrivals = Arrivals(kind=a.str("kind", d.arrivals.kind, choices=ARRIVALS),
                        rate_per_s=_number(a, "rate_per_s", 1.0, minimum=1e-12) or 1.0,
                        burstiness=_number(a, "burstiness", 1.0, minimum=1e-12) or 1.0,
                        concurrency=a.int("concurrency", 1, minimum=1), file=_relative(a, "file", base))
    s = top.mapping("speculative", None)
    s.check_keys({"draft_tokens", "acceptance_rate"})
    spec = WorkloadSpec(
        arrivals=arrivals,
        prompt_tokens=_lengths(top.mapping("prompt_tokens", None), d.prompt_tokens),
        output_tokens=_lengths(top.mapping("output_tokens", None), d.output_tokens),
        lengths_file=_relative(top, "lengths_file", base),
        prefix_hit_fraction=_number(top, "prefix_hit_fraction", 0.0, minimum=0, below=1) or 0.0,
        speculative=Speculative(
            draft_tokens=s.int("draft_tokens", 0),
            acceptance_rate=_number(s, "acceptance_rate", 0.0, minimum=0, below=1) or 0.0),
        requests=top.int("requests", d.requests, minimum=1),
        duration_s=_number(top, "duration_s", None, minimum=1e-12),
        seed=top.int("seed", 0),
        name=top.str("name", name),
    )
    spec.check(file)
    return spec


def builtin_workloads() -> list[str]:
    """Names of the workloads shipped with moesim (``--workload chat``)."""
    return builtin_names("workload")


def load_workload(name_or_path: str | Path) -> WorkloadSpec:
    """Read a workload YAML (a path, or a built-in name such as ``chat``) with ``yaml.safe_load``."""
    text = str(name_or_path)
    path = Path(text)
    if not path.exists() and "/" not in text and not text.endswith((".yaml", ".yml")):
        shipped = builtin_dir("workload") / f"{text}.yaml"
        if not shipped.is_file():
            raise UserError(f"unknown workload {text!r}; built-in: {', '.join(builtin_workloads())} "
                            "(or give a path to a YAML file)", field="--workload")
        path = shipped
    return parse_workload(read_yaml(path), str(path), path.parent, path.stem)
