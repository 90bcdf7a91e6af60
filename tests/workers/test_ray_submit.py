"""`RayWorkerPool.submit`: the actors sample while the caller does something else; `result()` keeps all of
`sample`'s fault handling (a death while the caller was away is re-issued, nothing is served twice)."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import torch

from learner.networks import GaussianMLPPolicy
from tests.fakes import POINT_SPEC, ROBOT, PointEnv, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SlowPointEnv(PointEnv):
    """PointEnv (same numbers) that takes `step_sleep` per step and touches `started` on its first step."""

    def __init__(self, horizon: int, step_sleep: float, started: str):
        super().__init__(horizon)
        self.step_sleep, self.started = step_sleep, started

    def step(self, action):
        Path(self.started).touch()
        time.sleep(self.step_sleep)
        return super().step(action)


@dataclass(frozen=True)
class SlowFactory:
    step_sleep: float
    started: str

    def __call__(self, family, robot, horizon):
        return SlowPointEnv(horizon, self.step_sleep, self.started)


def setup(tmp_path):
    torch.manual_seed(0)
    weights = {"v1": GaussianMLPPolicy(POINT_SPEC, init_std=0.5).to_weights("v1")}
    requests = [SampleRequest(t, ROBOT, "v1", 4, 20, 100 + i) for i, t in enumerate(point_tasks(4))]
    expected = LocalWorkerPool(1, lambda family, robot, horizon: PointEnv(horizon)).sample(requests, weights)
    return weights, requests, expected


def assert_same(expected, actual):
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        assert a.task == b.task
        for name in ("obs", "actions", "logp", "rewards", "mask"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.01)


def test_submit_returns_at_once_and_the_workers_sample_meanwhile(ray_local, tmp_path):
    from workers.ray_pool import RayWorkerPool

    weights, requests, expected = setup(tmp_path)
    started = tmp_path / "started"
    pool = RayWorkerPool(2, SlowFactory(0.01, str(started)))  # 2 requests x 4 episodes x 20 steps: >= 1.6 s each
    try:
        begun = time.monotonic()
        pending = pool.submit(requests, weights)
        assert pending.concurrent and time.monotonic() - begun < 1.0  # returned before the sampling could end
        wait_for(started)  # the actors run without anyone waiting on them
        batches = pending.result()
        assert pending.result() is batches  # asking again serves nothing twice
        assert_same(expected, batches)
        keys = [(b.worker_id, b.seq) for b in batches]
        assert len(set(keys)) == 4 and [w for w, _ in keys] == [0, 0, 1, 1]  # one call per actor, each batch once
    finally:
        pool.close()


def test_an_actor_killed_while_the_caller_is_away_is_reissued_in_result(ray_local, tmp_path):
    from workers.ray_pool import RayWorkerPool

    weights, requests, expected = setup(tmp_path)
    started = tmp_path / "started"
    pool = RayWorkerPool(2, SlowFactory(0.004, str(started)))
    try:
        pid = ray_local.get(pool.actors[0].ping.remote())["pid"]
        pending = pool.submit(requests, weights)
        wait_for(started)
        os.kill(pid, signal.SIGKILL)  # while the caller "updates the learner"
        time.sleep(0.5)
        batches = pending.result()
        assert_same(expected, batches)
        assert (pool.restarts, pool.reissued_requests, pool.duplicates_dropped) == (1, 2, 0)
        assert {b.worker_id for b in batches[:2]} == {1}  # the dead worker's requests went to the live one
        assert pool.wait_for_workers(timeout_s=60)
    finally:
        pool.close()
