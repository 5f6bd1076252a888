"""What runs on a worker: one cell's workflow call, its outcome as plain data.

A :class:`Task` names its large inputs (loaded traces) by key; the executor hands the loaded objects
over by reference (the same object in this process, a forked pool's inherited memory, Ray's object
store), so a trace is never pickled once per cell.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moesim.errors import UserError
from moesim.jsonable import to_jsonable
from moesim.sweeps.dataset import ERROR, EXECUTION_COLUMNS, FAILED, FIXED_COLUMNS, OK
from moesim.sweeps.schema import CellKind

InputKey = tuple[str, str]
"""(parameter name, value as given): one loaded large input."""


@dataclass(frozen=True)
class Task:
    """One cell to compute: its hash, its kind and its parameters (as given: names and paths)."""

    key: str
    kind: CellKind
    params: Mapping[str, Any]
    inputs: tuple[InputKey, ...] = ()
    """Large inputs to substitute for their parameters (loaded once by the driver)."""


@dataclass(frozen=True)
class Outcome:
    """What a cell produced: flat metrics (kinds with declared metrics) or a JSON result, or an error."""

    status: str
    metrics: Mapping[str, Any] | None = None
    result: str | None = None
    """The whole result as JSON text (kinds without declared metrics: the report's cells)."""
    error: str | None = None
    wall_s: float = 0.0
    worker: str = ""
    attempts: int = 1


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of nested mappings as ``outer.inner`` keys; lists of scalars as JSON text; lists
    of objects (per-device, per-link tables) are left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{name}."))
        elif isinstance(v, (list, tuple)):
            if all(not isinstance(x, (Mapping, list, tuple)) for x in v):
                out[name] = json.dumps(v)
        else:
            out[name] = v
    return out


def execute(task: Task, loaded: Mapping[str, Any]) -> Outcome:
    """Run one cell with its large inputs ``loaded`` (parameter -> object); errors become outcomes.

    A :class:`UserError` is the workflow refusing the inputs (``error``); anything else is a crash
    (``failed``). ``KeyboardInterrupt`` and ``SystemExit`` pass through: they stop the sweep."""
    t0 = time.perf_counter()
    try:
        value = to_jsonable(task.kind.run({**task.params, **loaded}))
        if task.kind.metrics is None:
            out = Outcome(OK, result=json.dumps(value, allow_nan=False, sort_keys=True))
        else:
            # A result named like a parameter or a fixed column (a workflow that grew a field) keeps its
            # value under another name instead of overwriting the column.
            taken = {*task.kind.schema, *FIXED_COLUMNS, *EXECUTION_COLUMNS}
            metrics = {f"{k}_result" if k in taken else k: v for k, v in flatten(value).items()}
            out = Outcome(OK, metrics=metrics)
    except UserError as e:
        out = Outcome(ERROR, error=str(e))
    except Exception as e:  # a bug or a resource failure in one cell: a row, not a crashed sweep
        out = Outcome(FAILED, error=f"{type(e).__name__}: {e}")
    return Outcome(out.status, out.metrics, out.result, out.error, time.perf_counter() - t0, worker_name())


def execute_with(table: Mapping[InputKey, Any], task: Task) -> Outcome:
    """:func:`execute` with the task's inputs looked up in ``table`` (what the driver loaded)."""
    return execute(task, {name: table[(name, value)] for name, value in task.inputs})
