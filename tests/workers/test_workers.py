"""Rollout worker and local pool: shapes, stamping, determinism, numpy/torch policy agreement."""

import numpy as np
import pytest
import torch

from learner.adaptation import log_prob
from learner.networks import GaussianMLPPolicy
from policy import NumpyGaussianPolicy, PolicyWeights
from tests.fakes import POINT_SPEC, ROBOT, PointEnv, point_env_factory, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool, split_evenly
from workers.rollout import rollout
from workers.worker import RolloutWorker


@pytest.fixture
def weights():
    torch.manual_seed(0)
    return GaussianMLPPolicy(POINT_SPEC, init_std=0.5).to_weights("v1")


def requests(n=4, version="v1", episodes=3, horizon=7, seed=0):
    return [SampleRequest(t, ROBOT, version, episodes, horizon, seed + i) for i, t in enumerate(point_tasks(n))]


def test_numpy_policy_matches_torch_log_prob(weights):
    module = GaussianMLPPolicy(POINT_SPEC)
    module.load_weights(weights)
    with torch.no_grad():
        module.obs_mean.fill_(0.3)
        module.obs_std.fill_(2.0)
    weights = module.to_weights("v2")
    obs, actions = np.random.randn(16, 2).astype(np.float32), np.random.randn(16, 2).astype(np.float32)
    expected = log_prob(module, dict(module.named_parameters()), torch.as_tensor(obs), torch.as_tensor(actions))
    np.testing.assert_allclose(NumpyGaussianPolicy(weights).log_prob(obs, actions), expected.detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_weights_missing_arrays_is_an_error(weights):
    arrays = dict(weights.arrays)
    del arrays["log_std"]
    with pytest.raises(ValueError, match="log_std"):
        PolicyWeights(POINT_SPEC, arrays, "broken")


def test_rollout_shapes_and_mask(weights):
    envs = [PointEnv(horizon=5) for _ in range(3)]
    out = rollout(envs, NumpyGaussianPolicy(weights), {"goal": [0.2, 0.2]}, horizon=8, seed=1)
    assert out["obs"].shape == (3, 8, 2) and out["actions"].shape == (3, 8, 2)
    assert out["mask"].sum(axis=1).tolist() == [5, 5, 5]  # env horizon 5 < requested 8: padding
    assert np.all(out["rewards"][:, 5:] == 0)


def test_worker_stamps_batches(weights):
    worker = RolloutWorker(worker_id=7, env_factory=point_env_factory)
    batches = worker.sample(requests(3), {"v1": weights})
    assert [b.worker_id for b in batches] == [7, 7, 7]
    assert [b.seq for b in batches] == [1, 2, 3]
    assert [b.task.task_id for b in batches] == [t.task_id for t in point_tasks(3)]
    assert all(b.policy_version == "v1" and b.num_steps == 3 * 7 for b in batches)


def test_worker_requires_weights_for_every_version(weights):
    worker = RolloutWorker(env_factory=point_env_factory)
    with pytest.raises(KeyError, match="v2"):
        worker.sample(requests(1, version="v2"), {"v1": weights})


def test_same_seed_same_batch_any_worker_count(weights):
    one = LocalWorkerPool(1, point_env_factory).sample(requests(5), {"v1": weights})
    three = LocalWorkerPool(3, point_env_factory).sample(requests(5), {"v1": weights})
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
    assert {b.worker_id for b in three} == {0, 1, 2}


def test_different_seeds_differ(weights):
    a = LocalWorkerPool(1, point_env_factory).sample(requests(1, seed=0), {"v1": weights})[0]
    b = LocalWorkerPool(1, point_env_factory).sample(requests(1, seed=99), {"v1": weights})[0]
    assert not np.array_equal(a.actions, b.actions)


@pytest.mark.parametrize(("count", "parts"), [(10, 3), (2, 4), (0, 2), (8, 8)])
def test_split_evenly(count, parts):
    ranges = split_evenly(count, parts)
    assert [i for r in ranges for i in r] == list(range(count))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


def test_env_cache_is_bounded_and_closes_evicted_envs(weights):
    closed = []

    class Tracked(PointEnv):
        def close(self):
            closed.append(self)

    worker = RolloutWorker(env_factory=lambda family, robot, horizon: Tracked(horizon), max_env_sets=2)
    for horizon in (5, 6, 7):
        worker.sample([SampleRequest(point_tasks(1)[0], ROBOT, "v1", 2, horizon, 0)], {"v1": weights})
    assert len(worker._envs) == 2 and len(closed) == 2  # the horizon-5 pair was closed
    assert all(env.horizon == 5 for env in closed)
