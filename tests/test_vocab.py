"""One vocabulary: every word of a policy family has its implementation, its CLI choice and its
docs row, and a wrong word is one error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.cli import build_parser
from moesim.errors import UserError
from moesim.planners import PLANNERS
from moesim.sim import SimConfig
from moesim.sim.misses import MISS_HANDLERS
from moesim.sim.prefetch import PREFETCHERS
from moesim.sim.stores import STORES
from moesim.vocab import AllToAll, CachePolicy, Dispatch, MissMode, Overlap, Phase, Prefetch, ReplicaSplit

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_word_has_an_implementation():
    assert set(STORES) == set(CachePolicy)
    assert set(MISS_HANDLERS) == set(MissMode)
    assert set(PREFETCHERS) | {Prefetch.NONE} == set(Prefetch)


def _choices(verb: str, flag: str) -> list[str]:
    sub = build_parser()._subparsers._group_actions[0].choices[verb]  # type: ignore[union-attr]
    action = next(a for a in sub._actions if flag in a.option_strings)
    return list(action.choices)


def test_cli_choices_are_the_vocabulary():
    for flag, enum in (("--phase", Phase), ("--cache", CachePolicy), ("--miss", MissMode),
                       ("--prefetch", Prefetch), ("--overlap", Overlap), ("--dispatch", Dispatch),
                       ("--a2a", AllToAll)):
        assert _choices("simulate", flag) == [m.value for m in enum], flag
    assert _choices("plan", "--planner") == [*PLANNERS, "all"]
    assert _choices("plan", "--miss") == [m.value for m in MissMode]  # auto among them


def test_docs_name_every_cache_word():
    plan_doc = (DOCS / "plan.md").read_text(encoding="utf-8")
    rows: dict[str, str] = {}
    for line in plan_doc.splitlines():  # the first table naming a field is the CachePlan's
        if line.startswith("| `"):
            rows.setdefault(line.split("|")[1].strip(), line)
    for field, enum in (("`policy`", CachePolicy), ("`miss`", MissMode), ("`prefetch`", Prefetch)):
        assert all(f"`{m.value}`" in rows[field] for m in enum), field


@pytest.mark.parametrize("field, value, shown", [
    ("phase", "decoding", "phase"), ("overlap", "full", "overlap"), ("replica_split", "odd", "replica_split"),
    ("dispatch", "nearest", "dispatch"), ("cache_policy", "fifo", "cache"), ("miss", "disk", "miss"),
    ("prefetch", "psychic", "prefetch"), ("a2a", "ring", "a2a"),
])
def test_a_wrong_word_names_its_field(field, value, shown):
    with pytest.raises(UserError) as err:
        SimConfig(cluster=None, model=None, trace=None, **{field: value})  # type: ignore[arg-type]
    assert err.value.field == shown and "expected one of" in str(err.value)


def test_words_become_members():
    cfg = SimConfig(cluster=None, model=None, trace=None, phase="prefill", replica_split="random",  # type: ignore[arg-type]
                    cache_policy="lfu")
    assert cfg.phase is Phase.PREFILL and cfg.replica_split is ReplicaSplit.RANDOM
    assert cfg.cache_policy is CachePolicy.LFU and cfg.miss is None
