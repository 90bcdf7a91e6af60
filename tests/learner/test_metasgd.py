"""Meta-SGD: learned per-parameter inner rates — trained, used by adapt, published with the weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from learner.builder import make_learner
from learner.config import LearnerConfig
from learner.metasgd import RATE_PREFIX, MetaSGD
from policy import PolicyWeights
from policy.artifact import ArtifactError, PolicyArtifact
from tests.fakes import POINT_SPEC, ROBOT, point_env_factory, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

TASKS = point_tasks(4, seed=2)



def config(**overrides) -> LearnerConfig:
    base = {"algorithm": "metasgd", "inner_lr": 0.1, "outer_lr": 0.02, "init_std": 0.5, "hidden_sizes": (16,),
            "device": "cpu", "ppo_epochs": 2}
    return LearnerConfig(**{**base, **overrides})


def sample(pool, weights, seed: int, episodes: int = 4, horizon: int = 12):
    requests = [SampleRequest(t, ROBOT, w.version, episodes, horizon, seed + i)
                for i, (t, w) in enumerate(zip(TASKS, weights))]
    return pool.sample(requests, {w.version: w for w in weights})


def iterate(learner, pool, it: int):
    support = sample(pool, learner.weights_for(TASKS, f"it{it}"), 100 * it)
    query = sample(pool, learner.adapt_for_training(support, f"it{it}"), 100 * it + 50)
    metrics = learner.learn(support, query)
    learner.observe([*support, *query])
    return support, query, metrics


@pytest.fixture
def pool():
    return LocalWorkerPool(env_factory=point_env_factory)


@pytest.mark.parametrize("first_order", [False, True])
def test_rates_are_trained_by_the_outer_loss(pool, first_order):
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config(first_order=first_order))
    assert isinstance(learner, MetaSGD)
    assert all(torch.all(r == 0.1) for r in learner.rates.values())
    _, _, metrics = iterate(learner, pool, 0)
    moved = [float((r.detach() - 0.1).abs().max()) for r in learner.rates.values()]
    assert min(moved) > 1e-3, moved  # every parameter's rates got a gradient and an Adam step
    assert metrics["inner_lr_min"] < 0.1 < metrics["inner_lr_max"]


def test_adapt_uses_the_learned_rates(pool):
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config())
    support = sample(pool, learner.weights_for(TASKS, "a"), 7)
    theta = {k: v.detach().clone() for k, v in learner.params().items()}
    base, _ = learner.adapt(support, "base")
    with torch.no_grad():
        learner.rates["log_std"].zero_()  # a zeroed rate freezes that parameter
        learner.rates["mean_head.weight"].mul_(3.0)  # a tripled rate triples that parameter's step
    adapted, weights = learner.adapt(support, "b")
    torch.testing.assert_close(adapted["log_std"], theta["log_std"].expand_as(adapted["log_std"]))
    assert (base["log_std"] - theta["log_std"]).abs().max() > 1e-3
    torch.testing.assert_close(adapted["mean_head.weight"] - theta["mean_head.weight"],
                               3.0 * (base["mean_head.weight"] - theta["mean_head.weight"]), atol=1e-6, rtol=1e-4)
    assert np.all(weights[0].arrays[RATE_PREFIX + "log_std"] == 0.0)


def test_rates_travel_with_the_published_weights(pool, tmp_path):
    """What deploy/adapt.py and `fleet eval` do: make_learner + load_weights, then adapt."""
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config())
    iterate(learner, pool, 0)
    weights = learner.policy_weights("published")
    assert {RATE_PREFIX + k for k in learner.params()} <= set(weights.arrays)
    PolicyArtifact.build(weights).save(tmp_path)
    loaded = PolicyArtifact.load(tmp_path).weights  # check_schema accepts the rate arrays
    fresh = make_learner(POINT_SPEC, config(inner_lr=0.5))
    fresh.policy.load_weights(loaded)
    for name, rate in learner.rates.items():
        torch.testing.assert_close(fresh.rates[name], rate.detach())
    support = sample(pool, [weights] * len(TASKS), 3)
    torch.testing.assert_close(fresh.adapt(support, "x")[0], learner.adapt(support, "x")[0])


def test_artifact_rejects_rates_of_the_wrong_shape(tmp_path):
    learner = make_learner(POINT_SPEC, config())
    weights = learner.policy_weights("v")
    arrays = {**weights.arrays, RATE_PREFIX + "log_std": np.zeros(5, np.float32)}
    PolicyArtifact.build(PolicyWeights(weights.spec, arrays, "v")).save(tmp_path)
    with pytest.raises(ArtifactError, match="inner_lr/log_std"):
        PolicyArtifact.load(tmp_path)


def test_load_weights_rejects_rates_for_unknown_parameters():
    learner = make_learner(POINT_SPEC, config())
    weights = learner.policy_weights("v")
    bad = PolicyWeights(weights.spec, {**weights.arrays, RATE_PREFIX + "nope": np.zeros(2, np.float32)}, "v")
    with pytest.raises(ValueError, match="unknown parameters"):
        learner.policy.load_weights(bad)


def test_state_dict_round_trip(pool):
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config())
    iterate(learner, pool, 0)
    other = make_learner(POINT_SPEC, config())
    other.load_state_dict(copy.deepcopy(learner.state_dict()))  # as a checkpoint would: no shared tensors
    for name in learner.rates:
        torch.testing.assert_close(other.rates[name], learner.rates[name].detach())
        torch.testing.assert_close(other.params()[name], learner.params()[name])
    assert len(other.optimizer.state_dict()["state"]) == len(learner.optimizer.state_dict()["state"])
    # Training continues identically from the restored state.
    torch.manual_seed(1)
    iterate(learner, pool, 1)
    torch.manual_seed(1)
    iterate(other, pool, 1)
    for name in learner.rates:
        torch.testing.assert_close(other.rates[name], learner.rates[name].detach())


@pytest.mark.slow
def test_metasgd_improves_post_adaptation_return(pool):
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config(hidden_sizes=(32, 32), ppo_epochs=3))
    post = [np.mean([b.mean_return() for b in iterate(learner, pool, it)[1]]) for it in range(12)]
    assert np.mean(post[-3:]) > np.mean(post[:3]) + 0.5, post
