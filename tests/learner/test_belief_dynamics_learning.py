"""The belief learner's dynamics model (learner/belief_dynamics.py) with the robot's privileged vector as z
(`task_encoding: robot`): on a point whose two motors have hidden gains (sign included) and whose reward says
nothing about them (it depends on the position reached only), the published belief finds a held-out robot's gains
from its motion within one episode; without the dynamics model it cannot. Also: config checks, the prior box from
the training robots, resume, the oracle told the robot's vector."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch

from fleet.robots import RobotSpec, robot_vector
from learner.belief import BeliefLearner
from learner.config import ConfigError, LearnerConfig, load_config
from learner.sampling import drive, requests_for
from learner.seeds import request_seed
from tests.fakes import POINT_SPEC, PointEnv, point_tasks
from workers.pool import LocalWorkerPool

HORIZON = 20
PARAMS = ("joint_gains",)


class GainPointEnv(PointEnv):
    """The point env whose action passes through the robot's first two joint gains (a reversed motor: < 0)."""

    def __init__(self, gains, horizon: int):
        super().__init__(horizon)
        self.gains = np.asarray(gains[:2], np.float32)

    def step(self, action):
        return super().step(np.clip(np.asarray(action, np.float32), -1, 1) * self.gains)


def gain_env_factory(family: str, robot: RobotSpec, horizon: int):
    return GainPointEnv(robot.gains, horizon)


def robots(n: int, seed: int) -> list[RobotSpec]:
    rng = np.random.default_rng(seed)
    gains = rng.uniform(0.5, 1.2, (n, 2)) * rng.choice([-1.0, 1.0], (n, 2))
    return [RobotSpec(robot_id=f"r{i}", joint_gains=(*map(float, g), 1, 1, 1, 1, 1)) for i, g in enumerate(gains)]


def config(**overrides) -> LearnerConfig:
    base = dict(algorithm="belief", task_encoding="robot", robot_params=PARAMS, dynamics=True, hidden_sizes=(32, 32),
                init_std=0.5, model_sizes=(32,), dynamics_sizes=(64, 64), model_steps=150, model_batch=256,
                model_episodes=4, belief_particles=128, device="cpu")
    return LearnerConfig(**{**base, **overrides})


def train(cfg: LearnerConfig, iterations: int = 4) -> BeliefLearner:
    torch.manual_seed(0)
    tasks, fleet = point_tasks(8, seed=0), robots(16, seed=0)
    learner = BeliefLearner(POINT_SPEC, cfg, tasks)
    rng = np.random.default_rng(0)
    with LocalWorkerPool(1, gain_env_factory) as pool:
        for it in range(iterations):
            chosen = [fleet[k] for k in rng.choice(len(fleet), 8, replace=False)]
            drive(learner.collect(tasks, it, 2), pool, requests_on(chosen, it))
            learner.update()
    return learner


def requests_on(chosen: list[RobotSpec], iteration: int):
    """Requests pairing task i of a phase with robot `chosen[i]` (as the trainer pairs tasks with the fleet)."""
    def requests(collect):
        return requests_for(collect, chosen[:len(collect.tasks)], HORIZON,
                            lambda i: request_seed(0, collect.stream, iteration, i))
    return requests


@pytest.fixture(scope="module")
def trained():
    return train(config())


def gain_errors(learner: BeliefLearner, robot_set: list[RobotSpec]) -> np.ndarray:
    """|belief mean - true gains| on the two real joints after one episode on each robot (the goal at the origin)."""
    from policy import make_policy

    policy, errors = make_policy(learner.policy_weights("eval")), []
    for k, robot in enumerate(robot_set):
        env, rng = GainPointEnv(robot.gains, HORIZON), np.random.default_rng(k)
        obs, _ = env.reset(seed=k, options={"task": {"goal": [0.3, -0.2]}})
        state = policy.initial_state(1, rng)
        act, reward, done = np.zeros((1, 2), np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32)
        for _ in range(HORIZON):
            act, _, state = policy.sample_step(obs[None], act, reward, done, state, rng)
            obs, r, _, _, _ = env.step(act[0])
            reward = np.array([r], np.float32)
        errors.append(np.abs(state.mean()[0, :2] - np.asarray(robot.gains[:2])))
    return np.asarray(errors)


def test_a_held_out_robots_gains_are_inferred_from_its_motion(trained):
    """Measured: with dynamics the gains' mean abs error after one episode is 0.14 (max 0.25; the box is about
    +-1.2 wide); the same learner without the dynamics model, same budget, stays at the prior's (0.88)."""
    held_out = robots(6, seed=7)
    inferred = gain_errors(trained, held_out)
    blind = train(config(dynamics=False))  # the reward says nothing about the gains
    reward_only = gain_errors(blind, held_out)
    assert inferred.mean() < 0.25 and (inferred < 0.6).all(), inferred
    assert reward_only.mean() > 0.5, reward_only


def test_the_prior_box_is_the_training_robots_range_and_z_their_vector(trained):
    weights = trained.policy_weights("v")
    assert weights.spec.context_dim == 12 and weights.spec.dynamics_sizes == (64, 64)
    seen = np.asarray([robot_vector(r, PARAMS) for r in robots(16, seed=0)])
    low, high = weights.arrays["belief.low"], weights.arrays["belief.high"]
    assert (low >= seen.min(0) - 1e-6).all() and (high <= seen.max(0) + 1e-6).all()
    assert low[0] < -0.5 and high[0] > 0.5 and np.all(low[2:] == 1.0) and np.all(high[2:] == 1.0)
    assert weights.arrays["dynamics.scale"].shape == (2,) and weights.arrays["dynamics.weight"][0] == 0.5
    assert trained.config.task_encoding == "robot"
    plan = trained.oracle().adaptation(point_tasks(2), 1, "v", 1)
    assert next(plan).robot_params == PARAMS  # the oracle is told each robot's vector


def test_state_round_trips_with_the_dynamics_model(trained):
    copy = BeliefLearner(POINT_SPEC, trained.config, trained.train_tasks)
    copy.load_state_dict(deepcopy(trained.state_dict()))
    a, b = trained.policy_weights("v").arrays, copy.policy_weights("v").arrays
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert copy.fit_model(3) == trained.fit_model(3) and copy.fit_dynamics_loss == trained.fit_dynamics_loss
    reward_only = BeliefLearner(POINT_SPEC, trained.config.model_copy(update={"dynamics": False}), trained.train_tasks)
    with pytest.raises(ValueError, match="has a dynamics model"):
        reward_only.load_state_dict(deepcopy(trained.state_dict()))


def test_dynamics_is_a_belief_setting():
    with pytest.raises(ConfigError, match=r"dynamics .* applies to algorithm 'belief' only"):
        load_config(data={"learner": {"algorithm": "mtppo", "dynamics": True}})
    assert load_config("configs/reach.yaml").learner.dynamics is False  # the main job keeps its reward-only belief
