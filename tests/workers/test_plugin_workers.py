"""A plugin task family (examples/nav2d.py, named module:object) served by Ray actors.

It lives with the other Ray tests (after tests/test_cli_errors.py, which checks that Ray was never started).
"""

import numpy as np
import pytest
import torch

import fleet
from fleet.tasks import TaskDistribution
from learner.networks import GaussianMLPPolicy
from policy import PolicySpec
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

NAV = "examples.nav2d:Nav2D"


@pytest.mark.integration
def test_plugin_family_under_ray_workers(ray_local):
    from workers.ray_pool import RayWorkerPool

    torch.manual_seed(0)
    weights = GaussianMLPPolicy(PolicySpec(2, 2, (16,)), init_std=0.5).to_weights("p")
    tasks = TaskDistribution(NAV, 6, 2, seed=0).sample(3)
    requests = [SampleRequest(t, fleet.RobotSpec(), "p", 2, 12, i) for i, t in enumerate(tasks)]
    pool = RayWorkerPool(2)
    try:
        remote = pool.sample(requests, {"p": weights})
    finally:
        pool.close()
    local = LocalWorkerPool(1).sample(requests, {"p": weights})
    assert {b.worker_id for b in remote} == {0, 1}
    for a, b in zip(local, remote):
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert b.num_steps == 24
