"""Where cells run: in this process, or in a local pool of worker processes (Ray: :mod:`.ray_executor`).

Every executor takes the tasks and the table of large inputs the driver loaded, and yields
``(task, outcome)`` as cells finish, in any order. A cell's error is an outcome; a worker that dies
(killed, out of memory, a crash in native code) is retried in a fresh process of its own, so the
blame falls on the cell that killed it, up to ``retries`` times, then recorded as ``failed``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any, Protocol

from moesim.sweeps.dataset import FAILED
from moesim.sweeps.worker import InputKey, Outcome, Task, execute, execute_with

DEFAULT_RETRIES = 2


class Executor(Protocol):
    """Runs tasks; yields each with its outcome as it finishes."""

    def describe(self) -> str: ...

    def run(self, tasks: Sequence[Task], table: Mapping[InputKey, Any]) -> Iterator[tuple[Task, Outcome]]: ...


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SerialExecutor:
    """Cells one after another in this process (``--workers 1``): no isolation, so a cell that kills
    the process ends the sweep (rerunning it resumes); tracebacks and debuggers work as usual."""

    def describe(self) -> str:
        return "this process"

    def run(self, tasks: Sequence[Task], table: Mapping[InputKey, Any]) -> Iterator[tuple[Task, Outcome]]:
        for task in tasks:
            yield task, execute_with(table, task)


# The large inputs of a pool worker: installed once per worker process by the pool's initializer (with
# the fork start method inherited, not copied; with spawn, pickled once per worker, never per cell).
_TABLE: Mapping[InputKey, Any] = {}


def _install(table: Mapping[InputKey, Any]) -> None:
    global _TABLE
    _TABLE = table
    # Ctrl-C is the driver's to handle: it saves the finished rows and stops the workers itself (an idle
    # worker interrupted in its queue read would only print a traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_installed(task: Task) -> Outcome:
    return execute_with(_TABLE, task)


@dataclass(frozen=True)
class PoolExecutor:
    """A local pool of ``workers`` processes (``--workers N``)."""

    workers: int
    retries: int = DEFAULT_RETRIES

    def describe(self) -> str:
        return f"{self.workers} local worker processes"

    def run(self, tasks: Sequence[Task], table: Mapping[InputKey, Any]) -> Iterator[tuple[Task, Outcome]]:
        ctx = multiprocessing.get_context()
        queue = deque(tasks)
        while queue:
            suspects: list[Task] = []
            before = set(multiprocessing.active_children())
            pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_install, initargs=(table,))
            running: dict[Future, Task] = {}
            try:
                while (queue or running) and not suspects:
                    # At most one task per worker in flight: when a worker dies, few cells are suspects.
                    while queue and len(running) < self.workers:
                        task = queue.popleft()
                        running[pool.submit(_run_installed, task)] = task
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    finished: list[tuple[Task, Outcome]] = []
                    for f in done:
                        task = running.pop(f)
                        try:
                            finished.append((task, f.result()))
                        except BrokenProcessPool:
                            suspects.append(task)
                        except BaseException:  # KeyboardInterrupt in a cell: hand over what finished first
                            yield from finished
                            raise
                    yield from finished
            except BaseException:  # Ctrl-C, or the consumer stopped: do not wait for the cells in flight
                for proc in set(multiprocessing.active_children()) - before:
                    proc.terminate()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            # Every task in flight when the pool broke fails with it: rerun each alone to find the culprit.
            for task in [*suspects, *running.values()]:
                yield task, self._alone(task, table, ctx)

    def _alone(self, task: Task, table: Mapping[InputKey, Any], ctx: Any) -> Outcome:
        if self.retries == 0:
            return Outcome(FAILED, error="a worker process died while this cell ran (not retried: retries 0)")
        loaded = {name: table[(name, value)] for name, value in task.inputs}
        code: int | None = None
        for attempt in range(2, self.retries + 2):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(send, task, loaded), daemon=True)
            proc.start()
            send.close()
            out: Outcome | None = None
            try:
                out = recv.recv()
            except EOFError:  # died before answering
                pass
            finally:
                recv.close()
                if proc.is_alive() and out is None:  # interrupted while it ran
                    proc.terminate()
                proc.join()
            if out is not None:
                return replace(out, attempts=attempt)
            code = proc.exitcode
        tries = self.retries + 1
        return Outcome(FAILED, error=f"worker died ({exit_text(code)}) on each of {tries} attempts",
                       attempts=tries)


def _child(conn: Any, task: Task, loaded: Mapping[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in the pool: the driver stops it
    conn.send(execute(task, loaded))
    conn.close()


def exit_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
