"""RayWorkerPool: the same RolloutWorker as Ray actors. Ray stays at this edge of the system."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray._private import ray_constants

from workers.batch import Batch, SampleRequest
from workers.policy import PolicyWeights
from workers.pool import WorkerPool, split_evenly
from workers.worker import EnvFactory, RolloutWorker

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
RESTART_TIMEOUT_S = 60.0  # how long a dead actor may take to come back before the pool replaces it


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / RAY_ADDRESS if given (cluster or `ray job submit`), else start a
    private local Ray whose servers listen on 127.0.0.1 only, without the dashboard."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    loopback_only()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        logging_level=logging.WARNING,
    )


def loopback_only() -> None:
    """Make a local Ray use 127.0.0.1 for every server it starts.

    On Linux, Ray turns "127.0.0.1" into the primary interface's address and its GCS and raylet
    listen on all interfaces. With cluster mode off (what Ray does on macOS/Windows), the node
    address resolves to loopback, for this process (the constant) and for every Ray process it
    spawns (the environment variable).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


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


@dataclass
class _Call:
    """One remote `sample_flat` call in flight: which actor slot, which request indices, how it fared."""

    slot: int
    indices: list[int]
    failures: int  # consecutive failures of these requests before this call
    deadline: float | None
    superseded: bool = False  # the watchdog re-issued its requests; a late result is a duplicate


class RayWorkerPool(WorkerPool):
    """`num_workers` RolloutWorker actors (1 CPU each). One remote call per worker per `sample`.

    Each weights version is `ray.put` once and shared by reference with every actor; the references
    travel with every call, re-issued ones included, so a restarted actor samples with current weights.
    Faults (see docs/reliability.md): a dead actor's requests are re-issued after Ray restarts it (or
    the pool replaces it); a call running past `call_timeout_s` gets its actor killed and its requests
    re-issued; an exception raised by the env is retried, and after `max_failures` consecutive failures
    of the same requests `WorkerFailure` is raised. Results are kept per request, so a request served
    twice yields one batch.

    Counters: `restarts` (actor deaths the pool saw, watchdog kills included, each followed by a Ray
    restart or a replacement; `replacements` counts the latter), `reissued_requests` (requests sent
    again), `duplicates_dropped` (results dropped because their request was already served).
    """

    def __init__(self, num_workers: int = 2, env_factory: EnvFactory | None = None, max_restarts: int = 2,
                 call_timeout_s: float | None = 300.0, max_failures: int = 3, max_task_retries: int = 0):
        init_ray()
        self.num_workers = num_workers
        self.call_timeout_s = call_timeout_s
        self.max_failures = max_failures
        self.max_restarts = max_restarts
        self._env_factory = env_factory
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=max_restarts, max_task_retries=max_task_retries)(
            RolloutWorker
        )
        self.actors = [self._actor_cls.remote(i, env_factory) for i in range(num_workers)]
        self._deaths = [0] * num_workers  # per actor handle: compared with max_restarts to decide replacement
        self._stale: dict[ray.ObjectRef, _Call] = {}  # calls still running after their sample() returned
        self._refs: dict[str, tuple[PolicyWeights, ray.ObjectRef]] = {}
        self._previous: dict[str, tuple[PolicyWeights, ray.ObjectRef]] = {}
        self.puts = 0  # how many weight objects went to the object store (tested: once per version)
        self.restarts = 0
        self.replacements = 0
        self.reissued_requests = 0
        self.duplicates_dropped = 0
        ray.get([actor.ping.remote() for actor in self.actors])

    def sample(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> list[Batch]:
        versions = sorted({r.policy_version for r in requests})
        refs = self._put(versions, weights)
        self.drain(timeout_s=0)
        issue = functools.partial(self._issue, requests=requests, versions=versions, refs=refs)
        results: list[Batch | None] = [None] * len(requests)
        pending: dict[ray.ObjectRef, _Call] = {}
        for slot, idx in enumerate(split_evenly(len(requests), self.num_workers)):
            if len(idx):
                pending.update(issue(slot, list(idx), failures=0))
        while any(b is None for b in results):
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self._wait_s(pending))
            if not ready:
                pending.update(self._kill_overdue(pending, requests, issue))
            for ref in ready:
                pending.update(self._collect(ref, pending.pop(ref), results, requests, issue))
        self._stale.update(pending)  # every request is served: whatever still runs can only duplicate
        self.drain(timeout_s=0)
        return results  # type: ignore[return-value]  # every slot is filled by now

    def drain(self, timeout_s: float = 0.0) -> int:
        """Wait up to `timeout_s` for superseded calls still running; count their results as duplicates."""
        if not self._stale:
            return 0
        ready, _ = ray.wait(list(self._stale), num_returns=len(self._stale), timeout=timeout_s)
        dropped = 0
        for ref in ready:
            call = self._stale.pop(ref)
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(ref)
                dropped += len(call.indices)
        self.duplicates_dropped += dropped
        return dropped

    def _issue(self, slot: int, indices: list[int], failures: int, *, requests, versions, refs) -> dict:
        chunk = [requests[i] for i in indices]
        deadline = None if self.call_timeout_s is None else time.monotonic() + self.call_timeout_s
        ref = self.actors[slot].sample_flat.remote(chunk, versions, *refs)
        return {ref: _Call(slot, indices, failures, deadline)}

    def _wait_s(self, pending: dict[ray.ObjectRef, _Call]) -> float | None:
        deadlines = [c.deadline for c in pending.values() if c.deadline is not None and not c.superseded]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _collect(self, ref, call: _Call, results: list, requests, issue) -> dict:
        """Take one finished call: keep its batches, or re-issue its requests after a failure."""
        try:
            batches = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            if call.superseded:  # the watchdog killed it and has re-issued already
                return {}
            # kill -9 of a restartable actor reads "unavailable" (Ray restarts it); "died" means for good.
            self._on_death(call.slot, permanent=isinstance(err, ray.exceptions.ActorDiedError))
            return self._retry(call, err, requests, issue)
        except ray.exceptions.RayTaskError as err:  # the env (or policy) raised: the actor is fine
            if call.superseded:
                return {}
            return self._retry(call, err.cause if err.cause is not None else err, requests, issue)
        for i, batch in zip(call.indices, batches):
            if results[i] is None:
                results[i] = batch
            else:
                self.duplicates_dropped += 1
        return {}

    def _retry(self, call: _Call, cause: BaseException, requests, issue) -> dict:
        failures = call.failures + 1
        if failures >= self.max_failures:
            task_ids = [requests[i].task.task_id for i in call.indices]
            raise WorkerFailure(call.slot, task_ids, cause, failures, getattr(cause, "task_id", None)) from cause
        log.warning("worker %d failed (%r); re-issuing %d requests", call.slot, cause, len(call.indices))
        self.reissued_requests += len(call.indices)
        return issue(call.slot, call.indices, failures=failures)

    def _kill_overdue(self, pending: dict[ray.ObjectRef, _Call], requests, issue) -> dict:
        """Watchdog: kill the actor of each call past its deadline (Ray restarts it) and re-issue its requests."""
        now, reissued = time.monotonic(), {}
        for call in pending.values():
            if call.superseded or call.deadline is None or call.deadline > now:
                continue
            call.superseded = True
            log.warning("worker %d: no result within %.1f s; killing it", call.slot, self.call_timeout_s)
            ray.kill(self.actors[call.slot], no_restart=False)
            self._on_death(call.slot)
            cause = TimeoutError(f"no result within call_timeout_s={self.call_timeout_s}")
            reissued.update(self._retry(call, cause, requests, issue))
        return reissued

    def _on_death(self, slot: int, permanent: bool = False) -> None:
        """Count a death; once Ray's restarts for this actor are used up, replace it with a fresh actor."""
        self.restarts += 1
        self._deaths[slot] += 1
        if permanent or self._deaths[slot] > self.max_restarts:
            self._replace(slot)
        self._await_alive(slot)

    def _replace(self, slot: int) -> None:
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._actor_cls.remote(slot, self._env_factory)
        self._deaths[slot] = 0
        self.replacements += 1

    def _await_alive(self, slot: int) -> None:
        """Block until the actor answers a ping, so calls are not re-issued into its restart window
        (they would fail as "unavailable"). Replaces it if Ray gives up on it or it does not come back."""
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                ray.get(self.actors[slot].ping.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            except (ray.exceptions.ActorDiedError, ray.exceptions.GetTimeoutError):
                pass
            self._replace(slot)
            return  # a fresh actor; a failure of the re-issued call counts against max_failures

    def _put(self, versions: list[str], weights: dict[str, PolicyWeights]) -> list[ray.ObjectRef]:
        missing = [v for v in versions if v not in weights]
        if missing:
            raise KeyError(f"no weights given for policy versions {missing}")
        fresh = {}
        known = {**self._previous, **self._refs}
        for version in versions:
            cached = known.get(version)
            if cached is None or cached[0] is not weights[version]:
                cached = (weights[version], ray.put(weights[version]))
                self.puts += 1
            fresh[version] = cached
        # Refs of this call and the one before stay (support with theta, query with phi_i, then
        # theta again for evaluation); older refs are dropped and Ray frees their objects.
        self._previous, self._refs = self._refs, fresh
        return [fresh[v][1] for v in versions]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        self._stale.clear()
        self._refs.clear()
        self._previous.clear()
