"""Reptile on the PointEnv fake: it learns, its outer step is the pseudo-gradient, its state round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.builder import make_learner
from learner.config import LearnerConfig
from learner.reptile import Reptile
from tests.fakes import POINT_SPEC, ROBOT, point_env_factory, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

TASKS = point_tasks(6, seed=1)



def config(**overrides) -> LearnerConfig:
    base = {"algorithm": "reptile", "inner_lr": 0.1, "outer_lr": 0.02, "init_std": 0.5, "hidden_sizes": (32, 32),
            "device": "cpu", "inner_steps": 1}
    return LearnerConfig(**{**base, **overrides})


def iterate(learner, pool, it: int, episodes: int = 6, horizon: int = 20):
    """One meta-iteration as the Trainer runs it: support with theta, adapt, query, update, observe."""
    def requests(weights, phase):
        return [SampleRequest(t, ROBOT, w.version, episodes, horizon, it * 100 + i * 10 + phase,
                              "support" if phase == 1 else "query") for i, (t, w) in enumerate(zip(TASKS, weights))]

    behaviour = learner.weights_for(TASKS, f"it{it}")
    support = pool.sample(requests(behaviour, 1), {w.version: w for w in behaviour})
    adapted = learner.adapt_for_training(support, f"it{it}")
    query = pool.sample(requests(adapted, 2), {w.version: w for w in adapted})
    metrics = learner.learn(support, query)
    learner.observe([*support, *query])
    return support, query, metrics


@pytest.mark.slow
def test_reptile_improves_post_adaptation_return():
    torch.manual_seed(0)
    learner, pool = make_learner(POINT_SPEC, config()), LocalWorkerPool(env_factory=point_env_factory)
    assert isinstance(learner, Reptile)
    post = []
    for it in range(12):
        _, query, metrics = iterate(learner, pool, it)
        post.append(np.mean([b.mean_return() for b in query]))
        assert metrics["reptile_distance"] > 0 and np.isfinite(metrics["grad_norm"])
    assert np.mean(post[-3:]) > np.mean(post[:3]) + 1.0, post


def test_outer_step_follows_the_pseudo_gradient():
    """With plain SGD in place of Adam, one outer step is exactly theta += lr * step * (mean phi' - theta)."""
    torch.manual_seed(0)
    learner, pool = make_learner(POINT_SPEC, config(reptile_step=0.5, max_grad_norm=1e6)), LocalWorkerPool(
        env_factory=point_env_factory)
    learner.optimizer = torch.optim.SGD(learner.policy.parameters(), lr=1.0)
    theta = {k: v.detach().clone() for k, v in learner.params().items()}
    behaviour = learner.weights_for(TASKS, "a")
    support = pool.sample([SampleRequest(t, ROBOT, "a", 4, 10, i) for i, t in enumerate(TASKS)],
                          {"a": behaviour[0]})
    adapted = learner.adapt_for_training(support, "a")
    query = pool.sample([SampleRequest(t, ROBOT, w.version, 4, 10, 50 + i) for i, (t, w) in
                         enumerate(zip(TASKS, adapted))], {w.version: w for w in adapted})
    phi, _ = learner.adapt(support, "x", steps=1)
    phi = learner.adapt(query, "y", params=phi, steps=1)[0]
    learner.learn(support, query)
    for name, value in learner.params().items():
        expected = theta[name] + 0.5 * (phi[name].mean(0) - theta[name])
        torch.testing.assert_close(value.detach(), expected, atol=1e-5, rtol=1e-4)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    learner, pool = make_learner(POINT_SPEC, config()), LocalWorkerPool(env_factory=point_env_factory)
    iterate(learner, pool, 0, episodes=2, horizon=8)
    other = make_learner(POINT_SPEC, config())
    other.load_state_dict(learner.state_dict())
    for (name, a), b in zip(learner.params().items(), other.params().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert other.optimizer.state_dict()["state"].keys() == learner.optimizer.state_dict()["state"].keys()
    np.testing.assert_array_equal(other.normalizer.mean, learner.normalizer.mean)
