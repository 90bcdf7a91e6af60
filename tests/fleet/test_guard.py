"""GuardWrapper: NaN actions never reach the env, exploding or non-finite states end the step and reset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import fleet
from fleet.envs.guard import GuardWrapper
from learner.interface import Collect
from learner.networks import GaussianMLPPolicy
from learner.trainer import accounting
from tests.fakes import POINT_SPEC, ROBOT, point_tasks
from workers.batch import SampleRequest
from workers.worker import RolloutWorker


class ExplodingEnv(gym.Env):
    """A 2-D point whose speed doubles every step from `explode_at` on; signals report it raw."""

    guard_limits = {"speed": (0.0, 5.0)}

    def __init__(self, explode_at: int = 3, bad_obs_at: int = -1, bad_reward_at: int = -1):
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.explode_at, self.bad_obs_at, self.bad_reward_at = explode_at, bad_obs_at, bad_reward_at
        self.actions_seen: list[np.ndarray] = []
        self.resets: list[dict | None] = []
        self.speed, self.t, self.task = 1.0, 0, None

    def set_task(self, params):
        self.task = params

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets.append(options)
        if options and "task" in options:
            self.task = options["task"]
        self.speed, self.t = 1.0, 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.actions_seen.append(np.asarray(action, np.float64).copy())
        self.t += 1
        if self.explode_at >= 0 and self.t >= self.explode_at:
            self.speed *= 1e3
        obs = np.full(2, np.nan if self.t == self.bad_obs_at else 0.1 * self.t, np.float32)
        reward = float("inf") if self.t == self.bad_reward_at else -1.0
        return np.clip(obs, -10, 10), reward, False, self.t >= 20, {"success": False}

    def guard_signals(self):
        return {"speed": self.speed}


def test_nan_action_is_replaced_flagged_and_resets_to_the_same_task():
    inner = ExplodingEnv(explode_at=-1)
    env = GuardWrapper(inner)
    env.reset(seed=0, options={"task": {"goal": 1}})
    _obs, reward, terminated, truncated, info = env.step(np.array([np.nan, 0.5], np.float32))
    assert np.isfinite(_obs).all()
    assert info["guard"] == "nonfinite_action" and truncated and not terminated and reward == 0.0
    assert all(np.isfinite(a).all() for a in inner.actions_seen)  # the NaN never reached the env
    np.testing.assert_array_equal(inner.actions_seen[-1], [0.0, 0.0])
    assert inner.resets[-1] == {"task": {"goal": 1}} and inner.t == 0
    assert env.trips == 1 and env.trips_by_reason == {"nonfinite_action": 1}
    _, reward, *_, info = env.step(np.array([0.5, 0.5]))
    assert "guard" not in info and reward == -1.0


def test_exploding_signal_trips_with_its_name_and_counts_accumulate():
    inner = ExplodingEnv(explode_at=3)
    env = GuardWrapper(inner)
    env.reset(seed=0, options={"task": {"goal": 2}})
    infos = [env.step(np.zeros(2))[4] for _ in range(3)]
    assert [info.get("guard") for info in infos] == [None, None, "speed"]
    assert infos[2]["guard_detail"] == "speed=1000 outside [0, 5]"
    assert inner.resets[-1] == {"task": {"goal": 2}} and inner.speed == 1.0  # fully reset, same task
    for _ in range(3):
        env.step(np.zeros(2))
    assert env.trips == 2 and env.trips_by_reason == {"speed": 2}


@pytest.mark.parametrize(("kwargs", "reason"), [({"bad_obs_at": 2}, "nonfinite_obs"),
                                                 ({"bad_reward_at": 2}, "nonfinite_reward")])
def test_nonfinite_observation_or_reward_trips(kwargs, reason):
    env = GuardWrapper(ExplodingEnv(explode_at=-1, **kwargs))
    env.reset(seed=0)
    env.step(np.zeros(2))
    obs, reward, _, truncated, info = env.step(np.zeros(2))
    assert info["guard"] == reason and truncated and np.isfinite(obs).all() and reward == 0.0


def test_nan_signal_trips_even_without_a_limit():
    inner = ExplodingEnv(explode_at=-1)
    inner.guard_signals = lambda: {"unlisted": float("nan")}
    env = GuardWrapper(inner)
    env.reset(seed=0)
    assert env.step(np.zeros(2))[4]["guard"] == "unlisted"


def test_env_without_guard_signals_gets_obs_checks_only():
    from tests.fakes import PointEnv

    env = GuardWrapper(PointEnv(horizon=5))
    env.reset(seed=0, options={"task": {"goal": [0.1, 0.1]}})
    assert "guard" not in env.step(np.ones(2))[4]
    assert env.step(np.array([np.inf, 0.0]))[4]["guard"] == "nonfinite_action"
    env.set_task({"goal": [0.3, 0.3]})  # forwarded to the env
    np.testing.assert_allclose(env.goal, [0.3, 0.3])


def test_rollout_batch_drops_the_guarded_step():
    torch.manual_seed(0)
    weights = GaussianMLPPolicy(POINT_SPEC, init_std=0.5).to_weights("g")
    worker = RolloutWorker(env_factory=lambda family, robot, horizon: GuardWrapper(ExplodingEnv(explode_at=4)))
    [batch] = worker.sample([SampleRequest(point_tasks(1)[0], ROBOT, "g", 2, 10, 0)], {"g": weights})
    np.testing.assert_array_equal(batch.mask, [[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]] * 2)  # step 4 tripped: dropped
    assert batch.stats["guard_trips"] == 2 and batch.num_steps == 6
    phase = Collect("support", (batch.task,), (weights,), 2, "support", label="pre")
    assert accounting([(phase, [batch]), (phase, [batch])])["guard_trips"] == 4


def _reach_env():
    env = fleet.make_env("reach", fleet.RobotSpec(), horizon=50)
    env.reset(seed=0, options={"task": {"goal": [0.6, 0.1, 0.4]}})
    return env


def test_real_reach_env_nan_action_keeps_the_simulation_finite():
    env = _reach_env()
    try:
        _, _, _, truncated, info = env.step(np.array([np.nan, 0.0, 0.0], np.float32))
        assert info["guard"] == "nonfinite_action" and truncated
        for _ in range(3):
            obs, reward, _, _, info = env.step(np.array([0.5, 0.0, 0.0], np.float32))
            assert np.isfinite(obs).all() and np.isfinite(reward) and "guard" not in info
    finally:
        env.close()


def test_real_reach_env_corrupted_joint_velocity_trips_and_resets():
    env = _reach_env()
    base = env.unwrapped
    try:
        assert "joint_speed" in base.guard_limits
        env.step(np.zeros(3, np.float32))
        base._bullet.resetJointState(base._body, 3, 0.0, 1e6)  # a blown-up state: 1e6 rad/s
        obs, _, _, truncated, info = env.step(np.zeros(3, np.float32))
        assert info["guard"] in base.guard_limits and truncated
        assert env.trips == 1 and env.trips_by_reason == {info["guard"]: 1}
        assert max(abs(v) for v in base.guard_signals().values() if v == v) < 1e3  # the env was reset
        obs, _, _, _, info = env.step(np.zeros(3, np.float32))
        assert "guard" not in info and np.isfinite(obs).all()
        assert env.get_task() == {"goal": [0.6, 0.1, 0.4]}  # the same task after the guard reset
    finally:
        env.close()
