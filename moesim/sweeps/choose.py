"""The executor the command-line flags ask for (``--workers N``, ``--ray [ADDRESS]``, ``--retries N``)."""

from __future__ import annotations

from moesim.errors import UserError
from moesim.sweeps.executors import DEFAULT_RETRIES, Executor, PoolExecutor, SerialExecutor, default_workers


def make_executor(workers: int | None = None, ray: str | None = None, *,
                  retries: int = DEFAULT_RETRIES) -> Executor:
    """``--workers N`` (default: the cores; 1: this process) or ``--ray [ADDRESS]`` (``local``: start a
    Ray instance here with ``workers`` CPUs; ``auto`` or an address: join that cluster)."""
    if workers is not None and workers < 1:
        raise UserError(f"expected at least 1 worker, got {workers}", field="--workers")
    if retries < 0:
        raise UserError(f"expected 0 or more retries, got {retries}", field="--retries")
    if ray is not None:
        from moesim.sweeps.ray_executor import RayExecutor, import_ray

        import_ray()  # one line with the install hint now, not after the cells are hashed
        return RayExecutor(address=None if ray == "local" else ray, workers=workers, retries=retries)
    n = default_workers() if workers is None else workers
    return SerialExecutor() if n == 1 else PoolExecutor(n, retries)
