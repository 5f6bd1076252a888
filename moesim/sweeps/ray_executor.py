"""Cells on a Ray cluster (``--ray``): the optional ``ray`` extra (``pip install 'moesim[ray]'``).

Large inputs go into Ray's object store once (``ray.put``) and every task gets the reference, which Ray
resolves on the worker's node (numpy arrays without a copy). A task whose worker dies is retried by
Ray (``max_retries``); what still fails is a ``failed`` row. Every node needs the same moesim
installed (the cell hash covers the driver's source code, not the workers').
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moesim.errors import UserError
from moesim.sweeps.dataset import FAILED
from moesim.sweeps.executors import DEFAULT_RETRIES, default_workers
from moesim.sweeps.worker import InputKey, Outcome, Task, execute

INSTALL_HINT = "pip install 'moesim[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}", field="--ray") from None
    return ray


def _remote_execute(task: Task, *objects: Any) -> Outcome:
    """A task on a Ray worker; Ray has already resolved the large inputs' references into ``objects``."""
    return execute(task, {name: obj for (name, _), obj in zip(task.inputs, objects, strict=True)})


@dataclass(frozen=True)
class RayExecutor:
    """``address=None`` starts a local Ray instance with ``workers`` CPUs (default: the cores) and stops it
    afterwards; ``auto`` or ``HOST:PORT`` (``ray://...`` too) joins a running cluster and leaves it up."""

    address: str | None = None
    workers: int | None = None
    retries: int = DEFAULT_RETRIES

    def describe(self) -> str:
        return "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address}"

    def run(self, tasks: Sequence[Task], table: Mapping[InputKey, Any]) -> Iterator[tuple[Task, Outcome]]:
        ray = import_ray()
        started = self._connect(ray)
        pending: dict[Any, Task] = {}
        try:
            needed = {k for t in tasks for k in t.inputs}
            refs = {k: ray.put(v) for k, v in table.items() if k in needed}
            remote = ray.remote(num_cpus=1, max_retries=self.retries)(_remote_execute)
            pending = {remote.remote(t, *[refs[k] for k in t.inputs]): t for t in tasks}
            while pending:
                # Up to 64 results a call: a sweep of many cells does not scan its pending list per cell.
                done, _ = ray.wait(list(pending), num_returns=min(len(pending), 64), timeout=0.5)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the worker or its node died, retries spent
                        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        error = f"{type(e).__name__} after {self.retries} retries: {first}"
                        out = Outcome(FAILED, error=error, attempts=self.retries + 1)
                    yield task, out
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Connect (True when this call started or joined Ray and should disconnect afterwards)."""
        if ray.is_initialized():  # already connected by the caller (a notebook, a test)
            return False
        if self.address is None:
            ray.init(num_cpus=self.workers or default_workers(), include_dashboard=False)
            return True
        try:
            ray.init(address=self.address)
        except (ConnectionError, RuntimeError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot join the Ray cluster at {self.address!r} ({why}); start one with "
                            "'ray start --head', or give --ray alone to start a local one",
                            field="--ray") from None
        return True
