"""`make_pool`: the pool a config's `workers.backend` names (the one place that chooses among pools)."""

from __future__ import annotations

from workers.pool import LocalWorkerPool, WorkerPool
from workers.worker import EnvFactory


def make_pool(backend: str, num_workers: int, env_factory: EnvFactory | None = None) -> WorkerPool:
    """Build the pool named by a config's `workers.backend`."""
    if backend == "local":
        return LocalWorkerPool(num_workers, env_factory)
    if backend == "ray":
        from workers.ray_pool import RayWorkerPool

        return RayWorkerPool(num_workers, env_factory)
    raise ValueError(f"unknown worker backend {backend!r}; expected 'local' or 'ray'")
