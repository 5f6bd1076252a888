"""Statistics-only synthesis profiles (JSON, schema ``moesim-synth-profile/v1``): reading and checking.

A profile holds sorted popularity curves, overlap and affinity targets, sequence lengths and an
optional drift model — no token data — so it can be shipped and rescaled to any model shape
(``moesim.traces.synth_fit.from_profile``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.limits import EXPERTS, LAYERS, TRACE_ROWS
from moesim.safe_yaml import read_yaml_file
from moesim.traces import drift_profile
from moesim.traces.synth import SRP_M
from moesim.traces.trace import UNKNOWN

PROFILE_SCHEMA = "moesim-synth-profile/v1"


def load_profile(path_or_name: str | Path) -> dict[str, Any]:
    from moesim.resources import builtin_dir

    p = Path(path_or_name)
    if not p.exists():
        p = builtin_dir("trace") / f"synth-profile-{path_or_name}.json"
    if not p.exists():
        raise UserError(f"no synthesis profile {path_or_name!r} (a JSON file or a shipped profile name)")
    prof = read_yaml_file(p)  # JSON is YAML too: bounded size, depth and one-line errors
    if not isinstance(prof, dict) or prof.get("schema") != PROFILE_SCHEMA:
        raise UserError(f"expected schema {PROFILE_SCHEMA}", file=p, field="schema")
    check_profile(prof, str(p))
    return prof


def check_profile(prof: dict[str, Any], file: str | None = None) -> None:
    """UserError naming the field unless ``prof`` has every statistic :func:`from_profile` reads, in range."""

    def bad(field: str, expected: str) -> UserError:
        if field not in prof:
            return UserError(f"missing required field ({expected})", file=file, field=field)
        got = repr(prof.get(field))
        return UserError(f"expected {expected}, got {got if len(got) <= 60 else got[:57] + '...'}", file=file,
                         field=field)

    def numbers(field: str, lo: float, hi: float, length: int | None = None) -> np.ndarray:
        value = prof.get(field)
        what = f"a list of {length or ''} numbers from {lo:g} to {hi:g}".replace("  ", " ")
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise bad(field, what)
        arr = np.asarray(value, np.float64)
        if (length is not None and len(arr) != length) or not np.all((arr >= lo) & (arr <= hi)):
            raise bad(field, what)
        return arr

    curves = prof.get("popularity_sorted")
    if (not isinstance(curves, list) or not curves or not all(isinstance(c, list) and c for c in curves)
            or len({len(c) for c in curves}) != 1):
        raise bad("popularity_sorted", "one non-empty list of expert shares per layer, all of one length")
    LAYERS.check(len(curves), file=file, field="popularity_sorted")
    EXPERTS.check(len(curves[0]), file=file, field="popularity_sorted")
    for i, c in enumerate(curves):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in c):
            raise UserError("expected shares from 0 to 1", file=file, field=f"popularity_sorted[{i}]")
    numbers("consecutive_overlap", 0, 1, len(curves))
    numbers("cross_layer_topk_mass", 0, 1)
    for field, lo, hi in (("seq_len_log_mean", 0.0, 25.0), ("seq_len_log_std", 0.0, 5.0)):
        v = prof.get(field)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise bad(field, f"a number from {lo:g} to {hi:g} (natural log of tokens per sequence)")
    mx = prof.get("seq_len_max")
    if isinstance(mx, bool) or not isinstance(mx, int) or mx < 1:
        raise bad("seq_len_max", "a whole number >= 1 (tokens of the longest sequence)")
    TRACE_ROWS.check(mx, file=file, field="seq_len_max")
    if prof.get("phase", UNKNOWN) not in (0, 1, UNKNOWN) or isinstance(prof.get("phase"), bool):
        raise bad("phase", "0 (prefill), 1 (decode) or -1 (unknown)")
    if prof.get("drift") is not None:
        drift_profile.check_drift(prof["drift"], layers=len(curves), experts=len(curves[0]), file=file)
    if not isinstance(prof.get("fitted_to", {}), dict):
        raise bad("fitted_to", "a mapping")
    srp = prof.get(f"srp_{SRP_M}")
    if srp is not None and (isinstance(srp, bool) or not isinstance(srp, (int, float)) or not 0 <= srp <= 1):
        raise bad(f"srp_{SRP_M}", "a number from 0 to 1")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
