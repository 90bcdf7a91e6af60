"""RayWorkerPool under real injected faults: kill -9, hung env steps, envs that raise.

Faults are injected through files the fake env looks at, because the env runs in another process.
A "once" flag file is claimed with `os.remove`, which exactly one process can win. This module is not
importable inside Ray workers (tests/workers is no package), so cloudpickle ships its fakes by value.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import torch

from learner.networks import GaussianMLPPolicy
from tests.fakes import POINT_SPEC, ROBOT, PointEnv, point_env_factory, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def claim(path: str | None) -> bool:
    """True for exactly one caller while the flag file exists."""
    if not path:
        return False
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


class FaultyPointEnv(PointEnv):
    """PointEnv (same numbers) that can be slowed down, announce its first step, or hang once."""

    def __init__(self, horizon: int, step_sleep: float, started: str | None, hang_once: str | None):
        super().__init__(horizon)
        self.step_sleep, self.started, self.hang_once = step_sleep, started, hang_once

    def step(self, action):
        if self.started:
            Path(self.started).touch()
        if claim(self.hang_once):
            while True:  # a hung simulator: only killing the process helps
                time.sleep(1)
        time.sleep(self.step_sleep)
        return super().step(action)


@dataclass(frozen=True)
class FaultyEnvFactory:
    """Picklable env factory (module level, so Ray can ship it) driven by flag files."""

    step_sleep: float = 0.0
    started: str | None = None  # touched on every step: tells the test a call is in flight
    hang_once: str | None = None  # while it exists, the first step to claim it hangs forever
    fail_once: str | None = None  # while it exists, the first constructor to claim it raises
    fail_always: bool = False

    def __call__(self, family, robot, horizon):
        if self.fail_always or claim(self.fail_once):
            raise OSError("simulator license server unreachable")
        return FaultyPointEnv(horizon, self.step_sleep, self.started, self.hang_once)


def make_weights(version: str, seed: int):
    torch.manual_seed(seed)
    return GaussianMLPPolicy(POINT_SPEC, init_std=0.5).to_weights(version)


def make_requests(version: str, count: int = 4, episodes: int = 4, horizon: int = 20):
    return [SampleRequest(t, ROBOT, version, episodes, horizon, 100 + i) for i, t in enumerate(point_tasks(count))]


def assert_same_batches(expected, actual):
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        assert a.task == b.task and a.policy_version == b.policy_version
        for name in ("obs", "actions", "logp", "rewards", "mask", "success"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def local_batches(requests, weights):
    return LocalWorkerPool(1, point_env_factory).sample(requests, weights)


def kill_when_started(pid: int, started: Path, delay_s: float = 0.2) -> threading.Thread:
    """kill -9 `pid` shortly after an env announces its first step (i.e. mid-sample)."""

    def run():
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay_s)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_killed_actor_mid_sample_is_restarted_and_its_requests_reissued(ray_local, tmp_path):
    """kill -9 of one actor mid-sample: all batches, in order, as undisturbed; next samples use current weights."""
    from workers.ray_pool import RayWorkerPool

    started = tmp_path / "started"
    v1, v2 = make_weights("v1", 0), make_weights("v2", 1)
    requests = make_requests("v1")
    pool = RayWorkerPool(2, FaultyEnvFactory(step_sleep=0.004, started=str(started)))
    try:
        pid = ray_local.get(pool.actors[0].ping.remote())["pid"]
        killer = kill_when_started(pid, started)
        batches = pool.sample(requests, {"v1": v1})
        killer.join()
        assert_same_batches(local_batches(requests, {"v1": v1}), batches)
        assert (pool.restarts, pool.reissued_requests, pool.duplicates_dropped) == (1, 2, 0)
        # The dead worker's requests went to worker 1 at once; worker 0 restarts in the background.
        assert {b.worker_id for b in batches[:2]} == {1}
        assert pool.wait_for_workers(timeout_s=60) and pool.live_slots == [0, 1]
        assert ray_local.get(pool.actors[0].ping.remote())["pid"] != pid  # a new process serves worker 0
        # Item 4: the restarted actor holds no weights of its own; the next call brings the current ones.
        requests_v2 = make_requests("v2")
        assert_same_batches(local_batches(requests_v2, {"v2": v2}), pool.sample(requests_v2, {"v2": v2}))
    finally:
        pool.close()


def test_hung_env_step_is_killed_by_the_watchdog(ray_local, tmp_path):
    """A step that never returns: the call times out, the actor is killed and restarted, the retry succeeds."""
    from workers.ray_pool import RayWorkerPool

    hang = tmp_path / "hang"
    hang.touch()
    weights = make_weights("v1", 0)
    requests = make_requests("v1", count=2, episodes=2, horizon=10)
    pool = RayWorkerPool(2, FaultyEnvFactory(hang_once=str(hang)), call_timeout_s=4.0)
    try:
        start = time.monotonic()
        batches = pool.sample(requests, {"v1": weights})
        assert time.monotonic() - start < 30
        assert not hang.exists()  # the hang really happened
        assert_same_batches(local_batches(requests, {"v1": weights}), batches)
        assert (pool.restarts, pool.reissued_requests) == (1, 1)
    finally:
        pool.close()


def test_request_served_twice_yields_one_batch(ray_local, tmp_path):
    """With max_task_retries Ray re-runs the killed call itself while the pool re-issues it: two results come
    back for the same request; sample() returns one batch per request and the late copy is dropped and counted."""
    from workers.ray_pool import RayWorkerPool

    hang = tmp_path / "hang"
    hang.touch()
    weights = make_weights("v1", 0)
    requests = make_requests("v1", count=2, episodes=2, horizon=10)
    pool = RayWorkerPool(2, FaultyEnvFactory(hang_once=str(hang)), call_timeout_s=4.0, max_task_retries=1)
    try:
        batches = pool.sample(requests, {"v1": weights})
        assert not hang.exists()
        assert_same_batches(local_batches(requests, {"v1": weights}), batches)
        assert [b.task.task_id for b in batches] == [r.task.task_id for r in requests]
        assert pool.reissued_requests == 1
        pool.drain(timeout_s=30)  # the second copy finishes after sample() returned
        assert pool.duplicates_dropped == 1
    finally:
        pool.close()


def test_env_that_always_fails_raises_worker_failure(ray_local):
    """An env constructor that always raises: WorkerFailure naming worker, task and cause, no endless retries."""
    from workers.ray_pool import RayWorkerPool, WorkerFailure

    weights = make_weights("v1", 0)
    requests = make_requests("v1", count=2, episodes=1, horizon=5)
    pool = RayWorkerPool(2, FaultyEnvFactory(fail_always=True), max_failures=3)
    try:
        start = time.monotonic()
        with pytest.raises(WorkerFailure) as info:
            pool.sample(requests, {"v1": weights})
        assert time.monotonic() - start < 20
        failure = info.value
        assert failure.failures == 3 and failure.worker_id in (0, 1)
        assert failure.task_id == requests[failure.worker_id].task.task_id
        assert isinstance(failure.cause, OSError)
        message = str(failure)
        assert f"worker {failure.worker_id}" in message and failure.task_id in message
        assert "license server unreachable" in message
        assert pool.restarts == 0  # an env exception is not an actor death
    finally:
        pool.close()


def test_env_that_fails_once_is_retried(ray_local, tmp_path):
    from workers.ray_pool import RayWorkerPool

    fail = tmp_path / "fail"
    fail.touch()
    weights = make_weights("v1", 0)
    requests = make_requests("v1", count=2, episodes=2, horizon=10)
    pool = RayWorkerPool(2, FaultyEnvFactory(fail_once=str(fail)))
    try:
        batches = pool.sample(requests, {"v1": weights})
        assert not fail.exists()
        assert_same_batches(local_batches(requests, {"v1": weights}), batches)
        assert (pool.restarts, pool.reissued_requests) == (0, 1)
    finally:
        pool.close()
