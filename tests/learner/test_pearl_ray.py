"""PEARL's data through Ray: a z-conditioned SAC policy's batches, final observations included, are the same
from Ray actors as from the local pool."""

import numpy as np
import pytest

from learner.config import LearnerConfig
from learner.pearl import PEARL
from policy import PolicySpec
from tests.fakes import ROBOT, point_env_factory, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

pytestmark = pytest.mark.integration


def test_ray_and_local_pools_give_equal_pearl_batches(ray_local):
    from workers.ray_pool import RayWorkerPool

    config = LearnerConfig(algorithm="pearl", hidden_sizes=(16,), latent_dim=2, device="cpu")
    weights = PEARL(PolicySpec(2, 2), config, seed=0).policy_weights("v1")
    reqs = [SampleRequest(t, ROBOT, "v1", 3, 9, 100 + i, context=(0.5, -float(i)))
            for i, t in enumerate(point_tasks(4))]
    local = LocalWorkerPool(1, point_env_factory).sample(reqs, {"v1": weights})
    pool = RayWorkerPool(2, point_env_factory)
    try:
        remote = pool.sample(reqs, {"v1": weights})
    finally:
        pool.close()
    for a, b in zip(local, remote):
        for name in ("obs", "actions", "logp", "rewards", "mask", "success", "final_obs", "context"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
