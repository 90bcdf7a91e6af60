"""The torch PEARL networks and their numpy twins (what a robot runs) agree, and the export covers the spec."""

from __future__ import annotations

import numpy as np
import torch

from learner.config import LearnerConfig
from learner.pearl import PEARL
from learner.sac import tanh_gaussian_log_prob
from policy import ContextEncoder, PolicySpec, make_policy


def make_learner() -> PEARL:
    config = LearnerConfig(algorithm="pearl", hidden_sizes=(16, 16), latent_dim=3, device="cpu")
    learner = PEARL(PolicySpec(4, 2), config, seed=0)
    with torch.no_grad():  # non-trivial normaliser statistics
        learner.policy.obs_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        learner.policy.obs_std.copy_(torch.tensor([0.5, 2.0, 1.0, 0.3]))
    return learner


def test_torch_and_numpy_encoders_agree():
    learner, rng = make_learner(), np.random.default_rng(0)
    obs, actions, rewards = rng.normal(size=(2, 30, 4)), rng.uniform(-1, 1, (2, 30, 2)), rng.normal(size=(2, 30))
    next_obs = rng.normal(size=(2, 30, 4))
    numpy_mu, numpy_var = ContextEncoder(learner.policy_weights("v")).posterior(obs, actions, rewards, next_obs)
    f = {k: torch.as_tensor(v, dtype=torch.float32)
         for k, v in (("o", obs), ("a", actions), ("r", rewards), ("n", next_obs))}
    with torch.no_grad():
        norm = learner.policy.normalize
        mu, var = learner.policy.encoder(norm(f["o"]), f["a"], f["r"], norm(f["n"]))
    np.testing.assert_allclose(numpy_mu, mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(numpy_var, var.numpy(), atol=1e-5)


def test_torch_and_numpy_actors_agree():
    learner, rng = make_learner(), np.random.default_rng(1)
    obs, z = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    policy = make_policy(learner.policy_weights("v"))
    actions, logp = policy.sample(obs, np.random.default_rng(5), context=z)
    noise = np.random.default_rng(5).standard_normal((8, 2)).astype(np.float32)  # the same draw
    with torch.no_grad():
        norm = learner.policy.normalize(torch.as_tensor(obs))
        mean, log_std = learner.policy.distribution(norm, torch.as_tensor(z).expand(8, 3))
        u = mean + log_std.exp() * torch.as_tensor(noise)
        torch_logp = tanh_gaussian_log_prob(u, mean, log_std)
    np.testing.assert_allclose(actions, torch.tanh(u).numpy(), atol=1e-5)
    np.testing.assert_allclose(logp, torch_logp.numpy(), atol=1e-4)


def test_published_weights_load_back_into_torch():
    learner, other = make_learner(), PEARL(PolicySpec(4, 2), make_learner().config, seed=9)
    weights = learner.policy_weights("v")
    other.policy.load_weights(weights)
    for key, value in other.policy_weights("v").arrays.items():
        np.testing.assert_array_equal(value, weights.arrays[key])
