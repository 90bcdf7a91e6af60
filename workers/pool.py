"""WorkerPool: one interface, two implementations that return the same batches for the same seeds.

>>> with make_pool("local", num_workers=2) as pool:
...     batches = pool.sample(requests, {"3": weights})
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from policy import PolicyWeights
from workers.batch import Batch, SampleRequest
from workers.worker import EnvFactory, RolloutWorker


def split_evenly(count: int, parts: int) -> list[range]:
    """Contiguous, balanced index ranges: each worker gets one call with several requests."""
    base, extra = divmod(count, parts)
    ranges, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


class WorkerPool(abc.ABC):
    """Turns a list of requests into a list of batches (same order)."""

    num_workers: int

    @abc.abstractmethod
    def sample(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> list[Batch]:
        """Serve every request; `weights` maps each request's policy_version to its weights."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers and their envs."""

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalWorkerPool(WorkerPool):
    """In-process workers, served one after another: for tests, debugging and `backend: local`."""

    def __init__(self, num_workers: int = 1, env_factory: EnvFactory | None = None):
        self.num_workers = num_workers
        self.workers = [RolloutWorker(i, env_factory) for i in range(num_workers)]

    def sample(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> list[Batch]:
        batches: list[Batch] = []
        for worker, idx in zip(self.workers, split_evenly(len(requests), self.num_workers)):
            batches += worker.sample([requests[i] for i in idx], weights)
        return batches

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
