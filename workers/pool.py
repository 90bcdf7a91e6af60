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


class WorkerFailure(RuntimeError):
    """A worker failed `failures` times in a row on the same requests: the pool gives up instead of looping.

    Attributes: `worker_id`, `task_ids` (the requests of the failing call; `task_id` is the one that
    raised, when the worker could tell), `cause` (the underlying exception), `failures`.
    """

    def __init__(self, worker_id: int, task_ids: list[str], cause: BaseException, failures: int,
                 task_id: str | None = None):
        self.worker_id, self.task_ids, self.cause, self.failures = worker_id, task_ids, cause, failures
        self.task_id = task_id
        request = f"request for task {task_id!r} (call with tasks {task_ids})" if task_id else f"tasks {task_ids}"
        super().__init__(f"worker {worker_id} failed {failures} times in a row serving {request}: {cause!r}")


class Pending(abc.ABC):
    """Batches on their way (`WorkerPool.submit`): `result()` blocks until every request is served and
    returns the batches in request order; calling it again returns the same list.

    `concurrent`: whether the workers run while the caller does something else (a Ray pool), or the
    batches were sampled inside `submit` (an in-process pool): the loop reports how long its learner kept
    the workers idle from this."""

    concurrent: bool = False

    @abc.abstractmethod
    def result(self) -> list[Batch]:
        """Every request's batch, in request order (the pool's fault handling runs here)."""


class Ready(Pending):
    """Batches sampled already (in `submit`): an in-process pool has no workers to run in the background."""

    def __init__(self, batches: list[Batch]):
        self.batches = batches

    def result(self) -> list[Batch]:
        return self.batches


class WorkerPool(abc.ABC):
    """Turns a list of requests into a list of batches (same order).

    `sample(requests, weights)` blocks; `submit(requests, weights)` hands back a `Pending` at once, so a
    caller can learn while the workers collect (learner/trainer.py with `train.overlap`). The weights are
    fixed at submit: what the learner does to its parameters afterwards does not reach those batches.
    """

    num_workers: int

    @abc.abstractmethod
    def sample(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> list[Batch]:
        """Serve every request; `weights` maps each request's policy_version to its weights."""

    def submit(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> Pending:
        """Start serving `requests`; by default (in-process pools) they are served here, before it returns."""
        return Ready(self.sample(requests, weights))

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
