"""RayWorkerPool: the same RolloutWorker as Ray actors. Ray stays at this edge of the system."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from policy import PolicyWeights
from workers.batch import Batch, SampleRequest
from workers.pool import Pending, WorkerFailure, WorkerPool, split_evenly
from workers.ray_connect import LOOPBACK, RayConnectError, init_ray, loopback_only  # noqa: F401 (re-exported)
from workers.worker import EnvFactory, RolloutWorker

log = logging.getLogger(__name__)
RESTART_TIMEOUT_S = 60.0  # how long a dead actor may take to come back before the pool replaces it
PING_RETRY_S = 0.05  # pause before pinging a restarting actor again after it answered "unavailable"


@dataclass
class _Call:
    """One remote `sample_flat` call in flight: which actor slot, which request indices, how it fared."""

    slot: int
    indices: list[int]
    failures: int  # consecutive failures of these requests before this call
    deadline: float | None
    epoch: int = 0  # deaths of the slot when the call was issued: a later death was already counted
    superseded: bool = False  # the watchdog re-issued its requests; a late result is a duplicate


@dataclass
class _Probe:
    """A slot out of rotation: its actor died and is being restarted (by Ray) or replaced (by the pool).

    The slot is back in rotation once its actor answers `ping`."""

    ref: ray.ObjectRef | None = None  # the ping in flight; None until the next one is sent
    deadline: float | None = None  # replace the actor if it has not answered by then; None: wait
    retry_at: float = 0.0  # when to send the next ping


class RayPending(Pending):
    """One `RayWorkerPool.submit`: its calls in flight and the batches served so far (one slot per request).
    `result()` runs the pool's fault handling until every request is served."""

    concurrent = True

    def __init__(self, pool: RayWorkerPool, requests: list[SampleRequest], issue):
        self.pool, self.requests, self.issue = pool, requests, issue
        self.results: list[Batch | None] = [None] * len(requests)
        self.pending: dict[ray.ObjectRef, _Call] = {}
        self.orphans: list[tuple[list[int], int]] = []  # (indices, failures) waiting for a live actor
        self.batches: list[Batch] | None = None

    def result(self) -> list[Batch]:
        if self.batches is None:
            self.batches = self.pool._finish(self)
        return self.batches


class RayWorkerPool(WorkerPool):
    """`num_workers` RolloutWorker actors (1 CPU each). One remote call per worker per `sample`.

    Each weights version is `ray.put` once and shared by reference with every actor; the references
    travel with every call, re-issued ones included, so a restarted actor samples with current weights.
    Faults (see docs/reliability.md): a dead actor's requests are re-issued at once to the live actor
    with the fewest requests in flight, while the dead slot is restarted (by Ray) or replaced (by the
    pool) in the background; the slot rejoins the rotation once its actor answers a ping. A slot whose
    actor cannot be scheduled (its node is gone) stays out of rotation, and sampling goes on with the
    remaining actors. A call running past `call_timeout_s` gets its actor killed and its requests
    re-issued; an exception raised by the env is retried, and after `max_failures` consecutive failures
    of the same requests `WorkerFailure` is raised. Results are kept per request, so a request served
    twice yields one batch.

    Counters: `restarts` (actor deaths the pool saw, watchdog kills included, each followed by a Ray
    restart or a replacement; `replacements` counts the latter), `reissued_requests` (requests sent
    again), `duplicates_dropped` (results dropped because their request was already served).
    """

    def __init__(self, num_workers: int = 2, env_factory: EnvFactory | None = None, max_restarts: int = 2,
                 call_timeout_s: float | None = 300.0, max_failures: int = 3, max_task_retries: int = 0,
                 placement_group=None, bundle_offset: int = 0):
        init_ray()
        # Worker i goes to bundle `bundle_offset + i` of `placement_group` (e.g. next to a GPU learner).
        self._group, self._bundle_offset = placement_group, bundle_offset
        self.num_workers = num_workers
        self.call_timeout_s = call_timeout_s
        self.max_failures = max_failures
        self.max_restarts = max_restarts
        self._env_factory = env_factory
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=max_restarts, max_task_retries=max_task_retries)(
            RolloutWorker
        )
        self.actors = [self._new_actor(i) for i in range(num_workers)]
        self._deaths = [0] * num_workers  # per actor handle: compared with max_restarts to decide replacement
        self._epochs = [0] * num_workers  # per slot: deaths seen so far (a call remembers the value at issue)
        self._probes: dict[int, _Probe] = {}  # slots out of rotation until their actor answers a ping
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
        return self.submit(requests, weights).result()

    def submit(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> RayPending:
        """Put the weights and dispatch one call per live actor; returns at once. Faults are handled when the
        caller asks for the `result()` (a death during the wait is seen then, and re-issued as in `sample`)."""
        requests = list(requests)
        versions = sorted({r.policy_version for r in requests})
        refs = self._put(versions, weights)
        self.drain(timeout_s=0)
        self._poll_probes()
        job = RayPending(self, requests, functools.partial(self._issue, requests=requests, versions=versions,
                                                           refs=refs))
        live = self.live_slots
        if live:  # fast path: one call per live actor
            for slot, idx in zip(live, split_evenly(len(requests), len(live))):
                if len(idx):
                    job.pending.update(job.issue(slot, list(idx), failures=0))
        elif requests:
            job.orphans.append((list(range(len(requests))), 0))
        return job

    def _finish(self, job: RayPending) -> list[Batch]:
        """Wait for `job`'s calls; re-issue the requests of failed, dead or overdue ones until all are served."""
        results, pending, orphans, issue = job.results, job.pending, job.orphans, job.issue
        while any(b is None for b in results):
            if orphans and self.live_slots:
                for indices, failures in orphans:
                    pending.update(issue(self._pick_slot(pending), indices, failures=failures))
                orphans.clear()
            ready = self._wait(pending)
            for ref in [r for r in pending if r in ready]:
                pending.update(self._collect(ref, pending.pop(ref), results, job.requests, issue, pending, orphans))
            pending.update(self._kill_overdue(pending, job.requests, issue, orphans))
            self._poll_probes()
        self._stale.update(pending)  # every request is served: whatever still runs can only duplicate
        pending.clear()
        self.drain(timeout_s=0)
        return results  # type: ignore[return-value]  # every slot is filled by now

    @property
    def live_slots(self) -> list[int]:
        """Slots in rotation: their actor has not died, or answered a ping since it did."""
        return [slot for slot in range(len(self.actors)) if slot not in self._probes]

    def wait_for_workers(self, timeout_s: float = RESTART_TIMEOUT_S) -> bool:
        """Block until every slot is back in rotation (or `timeout_s` passes); True if all are."""
        deadline = time.monotonic() + timeout_s
        while self._probes and time.monotonic() < deadline:
            self._wait({}, cap_s=deadline - time.monotonic())
            self._poll_probes()
        return not self._probes

    def _wait(self, pending: dict[ray.ObjectRef, _Call], cap_s: float | None = None) -> set[ray.ObjectRef]:
        """Block until a call or a ping finishes, a watchdog deadline passes or a ping is due; the ready refs."""
        now = time.monotonic()
        waits = [w for w in (self._wait_s(pending), cap_s) if w is not None]
        for probe in self._probes.values():
            if probe.ref is None:
                waits.append(probe.retry_at - now)
            if probe.deadline is not None:
                waits.append(probe.deadline - now)
        timeout = max(0.0, min(waits)) if waits else None
        refs = list(pending) + [p.ref for p in self._probes.values() if p.ref is not None]
        if refs:
            return set(ray.wait(refs, num_returns=1, timeout=timeout)[0])
        time.sleep(PING_RETRY_S if timeout is None else timeout)
        return set()

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
        return {ref: _Call(slot, indices, failures, deadline, self._epochs[slot])}

    def _pick_slot(self, pending: dict[ray.ObjectRef, _Call]) -> int:
        """The live slot with the fewest requests in flight (lowest index on a tie)."""
        load = dict.fromkeys(self.live_slots, 0)
        for call in pending.values():
            if call.slot in load and not call.superseded:
                load[call.slot] += len(call.indices)
        return min(load, key=lambda slot: (load[slot], slot))

    def _wait_s(self, pending: dict[ray.ObjectRef, _Call]) -> float | None:
        deadlines = [c.deadline for c in pending.values() if c.deadline is not None and not c.superseded]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _collect(self, ref, call: _Call, results: list, requests, issue, pending, orphans) -> dict:
        """Take one finished call: keep its batches, or re-issue its requests after a failure."""
        try:
            batches = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            if call.superseded:  # the watchdog killed it and has re-issued already
                return {}
            if call.epoch == self._epochs[call.slot]:  # not yet counted (several calls may share one death)
                # kill -9 of a restartable actor reads "unavailable" (Ray restarts it); "died" means for good.
                self._on_death(call.slot, permanent=isinstance(err, ray.exceptions.ActorDiedError))
            return self._retry(call, err, requests, issue, pending, orphans)
        except ray.exceptions.RayTaskError as err:  # the env (or policy) raised: the actor is fine
            if call.superseded:
                return {}
            return self._retry(call, err.cause if err.cause is not None else err, requests, issue, pending, orphans)
        for i, batch in zip(call.indices, batches):
            if results[i] is None:
                results[i] = batch
            else:
                self.duplicates_dropped += 1
        return {}

    def _retry(self, call: _Call, cause: BaseException, requests, issue, pending, orphans) -> dict:
        """Re-issue the call's requests: to the same actor if it is still in rotation (the env raised), else to
        the live actor with the fewest requests in flight; with no live actor, they wait for one."""
        failures = call.failures + 1
        if failures >= self.max_failures:
            task_ids = [requests[i].task.task_id for i in call.indices]
            raise WorkerFailure(call.slot, task_ids, cause, failures, getattr(cause, "task_id", None)) from cause
        self.reissued_requests += len(call.indices)
        if call.slot in self._probes:
            if not self.live_slots:
                log.warning("worker %d failed (%r); %d requests wait for a live worker",
                            call.slot, cause, len(call.indices))
                orphans.append((call.indices, failures))
                return {}
            slot = self._pick_slot(pending)
        else:
            slot = call.slot
        log.warning("worker %d failed (%r); re-issuing %d requests to worker %d",
                    call.slot, cause, len(call.indices), slot)
        return issue(slot, call.indices, failures=failures)

    def _kill_overdue(self, pending: dict[ray.ObjectRef, _Call], requests, issue, orphans) -> dict:
        """Watchdog: kill the actor of each call past its deadline (Ray restarts it) and re-issue its requests."""
        now, reissued = time.monotonic(), {}
        for call in list(pending.values()):
            if call.superseded or call.deadline is None or call.deadline > now:
                continue
            call.superseded = True
            log.warning("worker %d: no result within %.1f s; killing it", call.slot, self.call_timeout_s)
            if call.slot not in self._probes:  # else its actor is being restarted or replaced already
                ray.kill(self.actors[call.slot], no_restart=False)
                self._on_death(call.slot)
            cause = TimeoutError(f"no result within call_timeout_s={self.call_timeout_s}")
            reissued.update(self._retry(call, cause, requests, issue, {**pending, **reissued}, orphans))
        return reissued

    def _on_death(self, slot: int, permanent: bool = False) -> None:
        """Count a death and take the slot out of rotation; once Ray's restarts for this actor are used up,
        replace it with a fresh actor. Does not wait: `_poll_probes` puts the slot back once it answers."""
        self.restarts += 1
        self._deaths[slot] += 1
        self._epochs[slot] += 1
        if permanent or self._deaths[slot] > self.max_restarts:
            self._replace(slot)
        else:
            self._probes[slot] = _Probe(deadline=time.monotonic() + RESTART_TIMEOUT_S)

    def _replace(self, slot: int) -> None:
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new_actor(slot)
        self._deaths[slot] = 0
        self.replacements += 1
        # A new actor that cannot be scheduled yet (no free CPU, e.g. its node is gone) is waited for, not
        # replaced again: the slot stays out of rotation until Ray can place it.
        self._probes[slot] = _Probe(deadline=None)

    def _new_actor(self, slot: int):
        if self._group is None:
            return self._actor_cls.remote(slot, self._env_factory)
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = self._bundle_offset + slot
        strategy = PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=bundle)
        return self._actor_cls.options(scheduling_strategy=strategy).remote(slot, self._env_factory)

    def _poll_probes(self) -> None:
        """Without blocking: send due pings to slots out of rotation, put back those whose actor answered,
        replace those Ray gave up on or that did not come back within RESTART_TIMEOUT_S."""
        if not self._probes:
            return
        now = time.monotonic()
        for slot, probe in self._probes.items():
            if probe.ref is None and probe.retry_at <= now:
                probe.ref = self.actors[slot].ping.remote()
        refs = [p.ref for p in self._probes.values() if p.ref is not None]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        for slot, probe in list(self._probes.items()):
            if probe.ref in ready:
                try:
                    ray.get(probe.ref)
                except ray.exceptions.ActorUnavailableError:  # still restarting
                    probe.ref, probe.retry_at = None, time.monotonic() + PING_RETRY_S
                except ray.exceptions.RayActorError:  # Ray gave up on it
                    log.warning("worker %d did not come back; replacing it", slot)
                    self._replace(slot)
                else:
                    log.info("worker %d is back in rotation", slot)
                    del self._probes[slot]
                    continue
            expired = probe.deadline is not None and probe.deadline <= time.monotonic()
            if expired and self._probes.get(slot) is probe:  # not replaced just above
                log.warning("worker %d: no answer within %.0f s; replacing it", slot, RESTART_TIMEOUT_S)
                self._replace(slot)

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
        self._probes.clear()
        self._stale.clear()
        self._refs.clear()
        self._previous.clear()
