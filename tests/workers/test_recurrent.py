"""The numpy GRU policy and trial rollouts: torch/numpy agreement, state carried across the
episodes of a trial and reset between trials, seeding, trial-major layout, guard steps."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from learner.recurrent import GaussianGRUPolicy, recurrent_spec
from policy import NumpyGaussianPolicy, NumpyRL2Policy, PolicySpec, PolicyWeights, make_policy, rl2_shapes
from tests.fakes import POINT_SPEC, ROBOT, PointEnv, point_env_factory, point_tasks
from workers.batch import SampleRequest
from workers.recurrent import rollout_trials
from workers.rollout import rollout
from workers.worker import RolloutWorker

GRU_SPEC = recurrent_spec(POINT_SPEC, 16)
TASK = {"goal": [0.3, -0.2]}
KEYS = ("obs", "actions", "rewards", "mask")



def gru_weights(seed: int = 0) -> PolicyWeights:
    """A random GRU policy with a mean head large enough for the hidden state to matter."""
    torch.manual_seed(seed)
    module = GaussianGRUPolicy(GRU_SPEC, init_std=0.3)
    with torch.no_grad():
        module.mean_head.weight.normal_(0.0, 1.0)
        module.obs_mean.copy_(torch.tensor([0.1, -0.1]))
        module.obs_std.copy_(torch.tensor([0.5, 0.7]))
    return module.to_weights("gru")


def replay_means(policy: NumpyRL2Policy, arrays: dict, trial_episodes: int, reset_each_episode: bool):
    """Mean actions along recorded trials, recomputed step by step from the recorded arrays."""
    n, horizon = trial_episodes, arrays["obs"].shape[1]
    trials = arrays["obs"].shape[0] // n
    seq = {k: arrays[k].reshape(trials, n * horizon, *arrays[k].shape[2:]) for k in KEYS}
    hidden, means = policy.initial_state(trials), []
    prev_a, prev_r = np.zeros((trials, 2), np.float32), np.zeros(trials, np.float32)
    for s in range(n * horizon):
        first = s % horizon == 0 and s > 0
        if first and reset_each_episode:
            hidden = policy.initial_state(trials)
        mu, hidden = policy.step(seq["obs"][:, s], prev_a, prev_r, np.full(trials, float(first)), hidden)
        means.append(mu)
        prev_a = seq["actions"][:, s] * seq["mask"][:, s, None]
        prev_r = seq["rewards"][:, s] * seq["mask"][:, s]
    return np.stack(means, 1)


def test_gru_spec_layout_and_make_policy():
    weights = gru_weights()
    assert set(weights.arrays) == set(rl2_shapes(GRU_SPEC)) == set(GRU_SPEC.weight_names())
    for name, shape in rl2_shapes(GRU_SPEC).items():
        assert weights.arrays[name].shape == shape
    policy = make_policy(weights)
    assert isinstance(policy, NumpyRL2Policy) and policy.recurrent
    with pytest.raises(TypeError, match="needs its state"):
        policy.sample(np.zeros((1, 2)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="'mlp' policies only"):  # a feed-forward-only consumer says why
        NumpyGaussianPolicy(weights)
    with pytest.raises(ValueError, match="exactly one hidden size"):
        rl2_shapes(dataclasses.replace(GRU_SPEC, hidden_sizes=(8, 8)))


def test_numpy_and_torch_gru_agree_on_a_trial():
    weights = gru_weights()
    arrays = rollout_trials([PointEnv(15) for _ in range(3)], make_policy(weights), TASK, 15, seed=4,
                            trial_episodes=3)
    torch_policy = GaussianGRUPolicy(GRU_SPEC)
    torch_policy.load_weights(weights)
    n, h = 3, 15
    seq = {k: torch.as_tensor(arrays[k]).reshape(3, n * h, *arrays[k].shape[2:]) for k in KEYS}
    with torch.no_grad():
        mean = torch_policy.trial_mean(seq["obs"], seq["actions"], seq["rewards"], seq["mask"], h)
        from learner.networks import gaussian_log_prob

        logp = gaussian_log_prob(mean, torch_policy.log_std, seq["actions"])
    numpy_mean = replay_means(make_policy(weights), arrays, n, reset_each_episode=False)
    np.testing.assert_allclose(mean.numpy(), numpy_mean, atol=1e-5)
    np.testing.assert_allclose(logp.numpy().reshape(-1, h), arrays["logp"], atol=1e-4)


def test_hidden_state_carries_across_episodes_and_resets_between_trials():
    weights = gru_weights(1)
    policy = make_policy(weights)
    arrays = rollout_trials([PointEnv(10) for _ in range(2)], policy, TASK, 10, seed=9, deterministic=True,
                            trial_episodes=3)
    recorded = arrays["actions"].reshape(2, 30, 2)
    carried = replay_means(policy, arrays, 3, reset_each_episode=False)
    np.testing.assert_allclose(recorded, carried, atol=1e-5)  # each trial from a zero state, carried through
    reset = replay_means(policy, arrays, 3, reset_each_episode=True)
    np.testing.assert_allclose(recorded[:, :10], reset[:, :10], atol=1e-5)
    assert np.abs(recorded[:, 10:] - reset[:, 10:]).max() > 1e-3  # later episodes remember the earlier ones
    # A trial run alone (its own request) gives the same first episode: no state leaks between trials.
    alone = rollout_trials([PointEnv(10)], policy, TASK, 10, seed=9, deterministic=True, trial_episodes=3)
    np.testing.assert_allclose(alone["actions"][0], arrays["actions"][0], atol=1e-6)


def test_trials_are_trial_major_and_seeded_like_rollout():
    arrays = rollout_trials([PointEnv(5) for _ in range(2)], make_policy(gru_weights()), TASK, 5, seed=3,
                            trial_episodes=3)
    assert arrays["obs"].shape == (6, 5, 2) and arrays["success"].shape == (6,)
    seeds = np.random.SeedSequence(3).generate_state(6)
    for episode, env_seed in enumerate(seeds):  # episode e of trial i resets with seed i * n + e
        env = PointEnv(5)
        np.testing.assert_array_equal(arrays["obs"][episode, 0], env.reset(seed=int(env_seed))[0])


def test_feed_forward_policy_with_one_episode_trials_matches_rollout():
    rng = np.random.default_rng(0)
    sizes = [2, 32, 32]
    arrays = {"obs_mean": np.zeros(2), "obs_std": np.ones(2), "mean_head.weight": rng.normal(0, 1, (2, 32)),
              "mean_head.bias": np.zeros(2), "log_std": np.full(2, -1.0)}
    for i in range(2):
        arrays[f"hidden.{i}.weight"] = rng.normal(0, 0.5, (sizes[i + 1], sizes[i]))
        arrays[f"hidden.{i}.bias"] = np.zeros(32)
    policy = NumpyGaussianPolicy(PolicyWeights(POINT_SPEC, {k: v.astype(np.float32) for k, v in arrays.items()}))
    expected = rollout([PointEnv(8) for _ in range(3)], policy, TASK, 8, seed=11)
    got = rollout_trials([PointEnv(8) for _ in range(3)], policy, TASK, 8, seed=11, trial_episodes=1)
    for key in ("obs", "actions", "logp", "rewards", "mask", "success"):
        np.testing.assert_array_equal(got[key], expected[key])


def test_worker_serves_trials_deterministically_whatever_the_worker():
    weights = gru_weights()
    task = point_tasks(1)[0]
    request = SampleRequest(task, ROBOT, "gru", 6, 12, seed=21, trial_episodes=3)
    [a] = RolloutWorker(0, point_env_factory).sample([request], {"gru": weights})
    [b] = RolloutWorker(5, point_env_factory).sample([request, request], {"gru": weights})[1:]
    assert a.trial_episodes == 3 and a.obs.shape == (6, 12, 2)
    for key in ("obs", "actions", "logp", "rewards", "mask", "success"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    [c] = RolloutWorker(0, point_env_factory).sample([dataclasses.replace(request, seed=22)], {"gru": weights})
    assert not np.array_equal(a.actions, c.actions)


class GuardAtStep(gym.Wrapper):
    """PointEnv whose guard trips at step `at` of every episode."""

    def __init__(self, at: int):
        super().__init__(PointEnv(10))
        self.at, self.t = at, 0

    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        self.t += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "guard": self.t == self.at}


def test_guard_step_ends_the_episode_not_the_trial():
    weights = gru_weights()
    arrays = rollout_trials([GuardAtStep(4)], make_policy(weights), TASK, 10, seed=0, trial_episodes=2)
    assert arrays["guard_trips"] == 2
    np.testing.assert_array_equal(arrays["mask"][:, :3], 1.0)
    np.testing.assert_array_equal(arrays["mask"][:, 3:], 0.0)  # the guard step and the padding after it
    # Torch rebuilds the same sequence (padding included) from the recorded arrays.
    module = GaussianGRUPolicy(GRU_SPEC)
    module.load_weights(weights)
    seq = {k: torch.as_tensor(arrays[k]).reshape(1, 20, *arrays[k].shape[2:]) for k in KEYS}
    with torch.no_grad():
        mean = module.trial_mean(seq["obs"], seq["actions"], seq["rewards"], seq["mask"], 10)
    np.testing.assert_allclose(mean.numpy(), replay_means(make_policy(weights), arrays, 2, False), atol=1e-5)


def test_recurrent_policy_rejects_a_feed_forward_spec():
    bad = PolicyWeights(PolicySpec(2, 2, (4,)), {k: np.zeros(s, np.float32)
                                                 for k, s in PolicySpec(2, 2, (4,)).weight_shapes().items()})
    with pytest.raises(ValueError, match="needs an 'rl2' policy spec"):
        NumpyRL2Policy(bad)
