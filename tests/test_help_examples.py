"""Every example in every verb's ``--help`` runs as written (in a fresh folder, on shipped data).

An example that needs a file it does not make says so on the next line, ``needs FILE: COMMAND``; when
COMMAND is a moesim command it runs first, in the same folder. ``needs a CUDA GPU`` examples skip
without one; an example whose file only a user (or another program) can make is listed, not run.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moesim.cli import build_parser, main


@dataclass
class Example:
    verb: str
    argv: list[str]
    needs: list[tuple[str, str]] = field(default_factory=list)
    """(what, how to make it) for each ``needs`` line."""

    @property
    def makers(self) -> list[list[str]]:
        return [shlex.split(how)[1:] for _, how in self.needs if how.startswith("moesim ")]

    def why_not_runnable(self) -> str | None:
        for what, how in self.needs:
            if "CUDA GPU" in what:
                return "needs a CUDA GPU"
            if not how.startswith("moesim "):
                return f"needs {what}: {how}"
        return None


def parse_examples(verb: str, epilog: str) -> list[Example]:
    """The examples of one ``--help`` epilog: commands (with continuation lines) and their needs."""
    out: list[Example] = []
    lines = epilog.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("  moesim "):
            if line.startswith("      needs "):
                what, _, how = line.strip().removeprefix("needs ").partition(": ")
                out[-1].needs.append((what, how))
            continue
        text = line.strip()
        while text.endswith("\\"):
            text = text[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        command = re.split(r"\s{2,}", text)[0]  # a description follows after two or more spaces
        out.append(Example(verb, shlex.split(command)[1:]))
    return out


def all_examples() -> list[Example]:
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    return [ex for name, sub in verbs.items() for ex in parse_examples(name, sub.epilog or "")]


EXAMPLES = all_examples()


def test_every_verb_has_examples_and_every_example_parses() -> None:
    verbs = {ex.verb for ex in EXAMPLES}
    assert {"hw", "model", "trace", "simulate", "plan", "report", "calibrate"} <= verbs
    parser = build_parser()
    for ex in EXAMPLES:
        parser.parse_args(ex.argv)  # flags exist and their values are valid (exit 2 otherwise)
        for maker in ex.makers:
            parser.parse_args(maker)


def test_examples_that_cannot_run_here_say_what_they_need() -> None:
    unrunnable = {" ".join(ex.argv): ex.why_not_runnable() for ex in EXAMPLES if ex.why_not_runnable()}
    # user files only a person or another program makes, and the GPU verb; everything else runs
    assert all(reason and reason.startswith("needs ") for reason in unrunnable.values())
    assert len(unrunnable) <= len(EXAMPLES) // 2, unrunnable


def _needs_packages(argv: list[str]) -> list[str]:
    if argv[:2] == ["trace", "record"]:
        return ["torch", "transformers"]
    return ["torch"] if argv[:1] == ["calibrate"] else []


def _is_slow(ex: Example) -> bool:
    """The CPU calibration sweep: its smallest setting (--quick) times real kernels for ~20 s in 2 GB."""
    return ex.argv[:1] == ["calibrate"] and "cpu" in ex.argv


@pytest.mark.parametrize(
    "example",
    [pytest.param(ex, marks=[pytest.mark.slow] if _is_slow(ex) else [])
     for ex in EXAMPLES if ex.why_not_runnable() is None],
    ids=lambda ex: " ".join(ex.argv)[:60],
)
def test_runnable_example(example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    for argv in [*example.makers, example.argv]:
        for package in _needs_packages(argv):
            if importlib.util.find_spec(package) is None:
                pytest.skip(f"{package} is not installed")
    monkeypatch.chdir(tmp_path)
    for maker in example.makers:
        assert main(maker) == 0, capsys.readouterr().err
    code = main(example.argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "error" not in err.lower(), err
    if "--miss" in example.argv:  # the miss modes asked for exist on that hardware: no cell left out
        assert "not computed" not in err, err
