"""PEARL's numpy side: the 'pearl' spec layout, the tanh-Gaussian actor, the context encoder, the artifact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policy import ContextEncoder, NumpyPEARLPolicy, PolicyArtifact, PolicySpec, PolicyWeights, make_policy
from policy.context import product_of_gaussians
from policy.pearl import tanh_log_det

SPEC = PolicySpec(obs_dim=4, act_dim=2, hidden_sizes=(8, 8), activation="relu", kind="pearl",
                  conditioning="concat", context_dim=3)


def random_weights(spec: PolicySpec = SPEC, seed: int = 0) -> PolicyWeights:
    rng = np.random.default_rng(seed)
    arrays = {k: rng.normal(0, 0.5, shape).astype(np.float32) for k, shape in spec.weight_shapes().items()}
    arrays["obs_std"] = np.abs(arrays["obs_std"]) + 0.5
    return PolicyWeights(spec, arrays, "v1")


def test_sac_spec_needs_the_latent_concatenated():
    with pytest.raises(ValueError, match="conditioning='concat'"):
        PolicySpec(4, 2, (8,), "relu", "pearl")
    shapes = SPEC.weight_shapes()
    assert shapes["hidden.0.weight"] == (8, 4 + 3)  # obs + z
    assert shapes["encoder.hidden.0.weight"] == (8, 4 + 2 + 1 + 4)  # obs, action, reward, next obs
    assert shapes["encoder.out.weight"] == (6, 8)  # mean and variance per latent dimension
    assert PolicySpec.from_dict(SPEC.to_dict()) == SPEC


def test_make_policy_picks_the_sac_actor_and_actions_are_bounded():
    policy = make_policy(random_weights())
    assert isinstance(policy, NumpyPEARLPolicy)
    obs = np.random.default_rng(1).normal(0, 3, (16, 4)).astype(np.float32)
    actions, logp = policy.sample(obs, np.random.default_rng(2), context=np.ones(3, np.float32))
    assert actions.shape == (16, 2) and logp.shape == (16,) and np.all(np.abs(actions) <= 1.0)
    mean, _ = policy.sample(obs, np.random.default_rng(2), deterministic=True, context=np.ones((16, 3)))
    np.testing.assert_allclose(mean, policy.mean(obs, np.ones(3)), rtol=1e-6)
    with pytest.raises(ValueError, match="latent z of length 3"):
        policy.sample(obs, np.random.default_rng(2))


def test_tanh_log_prob_matches_the_change_of_variables_by_hand():
    # One dimension, u = 0.5, mean 0, std 1: log N(0.5) - log(1 - tanh(0.5)^2).
    u = np.array([[0.5]])
    expected = -0.5 * 0.25 - 0.5 * math.log(2 * math.pi) - math.log(1 - math.tanh(0.5) ** 2)
    normal = -0.5 * 0.25 - 0.5 * math.log(2 * math.pi)
    assert normal - tanh_log_det(u)[0] == pytest.approx(expected, rel=1e-9)
    assert np.isfinite(tanh_log_det(np.array([[40.0, -40.0]])))[0]  # saturated actions stay finite


def test_product_of_gaussians_by_hand_and_order_free():
    mus, variances = np.array([[1.0], [3.0]]), np.array([[1.0], [3.0]])
    mu, var = product_of_gaussians(mus, variances)
    # 1 / (1/1 + 1/3) = 0.75; 0.75 * (1/1 + 3/3) = 1.5
    np.testing.assert_allclose(var, [0.75])
    np.testing.assert_allclose(mu, [1.5])
    encoder = ContextEncoder(random_weights())
    rng = np.random.default_rng(3)
    obs, act, rew = rng.normal(size=(10, 4)), rng.uniform(-1, 1, (10, 2)), rng.normal(size=10)
    perm = rng.permutation(10)
    nxt = obs + 0.1
    np.testing.assert_allclose(encoder.posterior(obs, act, rew, nxt),
                               encoder.posterior(obs[perm], act[perm], rew[perm], nxt[perm]))
    mu0, var0 = encoder.posterior(obs[:0], act[:0], rew[:0], nxt[:0])
    np.testing.assert_array_equal(mu0, np.zeros(3))
    np.testing.assert_array_equal(var0, np.ones(3))
    assert np.all(encoder.posterior(obs, act, rew, nxt)[1] < encoder.posterior(obs[:2], act[:2], rew[:2], nxt[:2])[1])


def test_artifact_saves_and_loads_actor_and_encoder(tmp_path):
    weights = random_weights()
    PolicyArtifact.build(weights, algorithm="pearl").save(tmp_path / "p")
    loaded = PolicyArtifact.load(tmp_path / "p").weights
    assert loaded.spec == SPEC and set(loaded.arrays) == set(SPEC.weight_shapes())
    obs = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(make_policy(loaded).mean(obs, np.ones(3)), make_policy(weights).mean(obs, np.ones(3)))
    np.testing.assert_array_equal(ContextEncoder(loaded).posterior(obs, obs[:, :2], obs[:, 0], obs)[0],
                                  ContextEncoder(weights).posterior(obs, obs[:, :2], obs[:, 0], obs)[0])
