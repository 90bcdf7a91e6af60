"""The RMA learner (learner/rma.py) and its numpy policy (policy/rma.py).

On a point task whose robots have hidden motor polarities (a robot's joint_gains flip the sign of each action
axis; the goal is observed), a policy that does not know the robot cannot do better than guess the direction;
told the robot (the oracle) it goes straight to the goal. RMA must recover most of the oracle's gain from the
robot's own (obs, action) history on robots it never saw - a learner that does not infer fails this test. Also:
the adaptation module's input window and regression target against hand numbers, numpy == torch, resume."""

from __future__ import annotations

from copy import deepcopy

import gymnasium as gym
import numpy as np
import pytest
import torch

from fleet.robots import RobotSpec, robot_vector
from fleet.tasks import Task
from learner.config import LearnerConfig
from learner.evaluation import EvalProtocol, evaluate
from learner.rma import RMALearner, history_windows
from learner.sampling import drive, requests_for
from learner.seeds import request_seed
from policy import PolicySpec
from policy.rma import NumpyRMAPolicy
from workers.batch import Batch
from workers.pool import LocalWorkerPool

HORIZON = 20
SPEC = PolicySpec(obs_dim=4, act_dim=2, hidden_sizes=(32, 32))
SIGNS = [(1, 1), (-1, -1), (1, -1), (-1, 1)]


def robot(i: int, a: float, b: float) -> RobotSpec:
    return RobotSpec(robot_id=f"r{i}", joint_gains=(a, b, 1.0, 1.0, 1.0, 1.0, 1.0))


TRAIN_ROBOTS = [robot(i, sa * m, sb * m) for i, ((sa, sb), m) in enumerate(
    (s, m) for s in SIGNS for m in (0.8, 1.0, 1.2))]
TEST_ROBOTS = [robot(100 + i, sa * 0.9, sb * 1.1) for i, (sa, sb) in enumerate(SIGNS)]


class SignedPointEnv(gym.Env):
    """A point moves by 0.1 * gains * action towards an observed goal; obs = [position, goal - position]."""

    def __init__(self, robot: RobotSpec, horizon: int = HORIZON):
        self.gains = np.asarray(robot.joint_gains[:2] or (1.0, 1.0), np.float32)
        self.horizon = horizon
        self.observation_space = gym.spaces.Box(-4.0, 4.0, (4,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.goal, self.pos, self.t = np.zeros(2, np.float32), np.zeros(2, np.float32), 0

    def obs(self):
        return np.concatenate([self.pos, self.goal - self.pos]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.goal = np.asarray(options["task"]["goal"], np.float32)
        self.pos, self.t = self.np_random.uniform(-0.01, 0.01, 2).astype(np.float32), 0
        return self.obs(), {}

    def step(self, action):
        action = np.nan_to_num(np.clip(np.asarray(action, np.float32), -1, 1))
        self.pos = np.clip(self.pos + 0.1 * self.gains * action, -2, 2).astype(np.float32)
        self.t += 1
        dist = float(np.linalg.norm(self.pos - self.goal))
        return self.obs(), -dist, False, self.t >= self.horizon, {"success": dist < 0.1}


def factory(family: str, robot: RobotSpec, horizon: int) -> gym.Env:
    return SignedPointEnv(robot, horizon)


def tasks(n: int, seed: int, split: str = "train") -> list[Task]:
    rng = np.random.default_rng(seed)
    return [Task("point", f"point/{split}/{i}", {"goal": rng.uniform(-0.6, 0.6, 2).tolist()}) for i in range(n)]


def config(**rma) -> LearnerConfig:
    settings = {"latent": 4, "history": 3, "adapt_from": 40, "adapt_steps": 200, "adapt_batch": 512,
                "adapt_sizes": (64, 64), "encoder_sizes": (32,), **rma}
    return LearnerConfig(algorithm="rma", robot_params=("joint_gains",), hidden_sizes=(64, 64), outer_lr=3e-3,
                         init_std=0.5, ppo_epochs=5, device="cpu", rma=settings)


def iterate(learner, pool, batch, iteration, episodes=6):
    rng = np.random.default_rng(iteration)
    robots = [TRAIN_ROBOTS[i] for i in rng.integers(0, len(TRAIN_ROBOTS), len(batch))]

    def requests(collect):
        return requests_for(collect, robots, HORIZON, lambda i: request_seed(0, collect.stream, iteration, i))

    drive(learner.collect(batch, iteration, episodes), pool, requests)
    return learner.update()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train = tasks(24, seed=0)
    learner = RMALearner(SPEC, config(), train)
    pool = LocalWorkerPool(1, factory)
    rng = np.random.default_rng(0)
    for it in range(60):
        metrics = iterate(learner, pool, [train[i] for i in rng.choice(len(train), 8, replace=False)], it)
    yield learner, pool, metrics
    pool.close()


def held_out(model, pool, robots=TEST_ROBOTS):
    test = tasks(8, seed=99, split="test")
    protocol = EvalProtocol(tuple(test), tuple(robots[i % len(robots)] for i in range(len(test))), (0,), 4,
                            HORIZON, seed=5, deterministic=True)
    return evaluate(model, pool, protocol).summary()[0]


def test_rma_infers_the_robot_on_held_out_robots_close_to_the_oracle(trained):
    learner, pool, metrics = trained
    assert metrics["adapter_loss"] < 0.2, metrics  # relative to the latent's variance
    adaptive, oracle = held_out(learner, pool), held_out(learner.oracle(), pool)
    # the same base policy acting with the average training robot's latent: what knowing nothing gives it
    mean_z = learner.extrinsics(torch.tensor([robot_vector(r, ("joint_gains",)) for r in TRAIN_ROBOTS])).mean(0)
    blind = deepcopy(learner)
    with torch.no_grad():
        for layer in blind.adapter.hidden:
            layer.weight.zero_()
        blind.adapter.out.weight.zero_()
        blind.adapter.out.bias.copy_(mean_z)
    agnostic = held_out(blind, pool)
    assert oracle["success_mean"] >= 0.8, oracle
    assert agnostic["success_mean"] <= 0.5, agnostic
    span = oracle["return_mean"] - agnostic["return_mean"]
    assert span > 2.0, (oracle, agnostic)
    assert adaptive["return_mean"] - agnostic["return_mean"] >= 0.8 * span, (adaptive, oracle, agnostic)


def test_published_policy_is_adaptive_and_the_oracle_privileged(trained):
    learner, _, _ = trained
    published = learner.policy_weights("v")
    assert published.spec.kind == "rma" and NumpyRMAPolicy(published).recurrent
    assert not NumpyRMAPolicy(learner.oracle().policy_weights("v")).recurrent


def test_a_published_rma_policy_evaluates_as_its_learner_does(trained):
    """`fleet eval` of a registered RMA policy (learner.published.PublishedInContext: its numpy weights only)
    measures exactly what the learner's own evaluation measures; privileged weights are refused."""
    from learner.published import PublishedInContext, published_learner

    learner, pool, _ = trained
    published = published_learner(learner.policy_weights("eval/rma"))
    assert isinstance(published, PublishedInContext) and published.algorithm == "rma"
    assert held_out(published, pool) == held_out(learner, pool)
    with pytest.raises(ValueError, match="evaluated adaptive"):
        PublishedInContext(learner.oracle().policy_weights("v"))


def test_history_window_against_hand_numbers():
    obs = torch.tensor([[[1.0], [2.0], [3.0]]])
    actions = torch.tensor([[[0.5], [2.0], [-3.0]]])  # clipped to [-1, 1] in the window
    windows = history_windows(obs, actions, history=2)
    assert windows.tolist() == [[[0, 0, 0, 0, 1], [0, 0, 1, 0.5, 2], [1, 0.5, 2, 1, 3]]]


def test_numpy_policy_state_matches_the_training_window_and_actions_match_torch():
    torch.manual_seed(1)
    learner = RMALearner(SPEC, config(history=3), tasks(4, 0))
    with torch.no_grad():
        learner.policy.obs_mean.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        learner.policy.obs_std.copy_(torch.tensor([0.5, 2.0, 1.0, 1.5]))
    weights = learner.rma_weights("v", adaptive=True)
    policy = NumpyRMAPolicy(weights)
    rng = np.random.default_rng(0)
    obs, actions = rng.normal(size=(1, 6, 4)).astype(np.float32), rng.normal(size=(1, 6, 2)).astype(np.float32)
    state, prev = policy.initial_state(1), np.zeros((1, 2), np.float32)
    norm = torch.clamp((torch.tensor(obs) - learner.policy.obs_mean) / learner.policy.obs_std, -10, 10)
    windows = history_windows(norm, torch.tensor(actions), 3)[0]
    for t in range(6):
        mean_np, state = policy.step(obs[:, t], prev, np.zeros(1), np.zeros(1), state)
        k = 3 * 6
        np.testing.assert_allclose(np.concatenate([state[0, :k], policy.normalise(obs[:, t])[0]]),
                                   windows[t].numpy(), atol=1e-6)
        with torch.no_grad():
            z = learner.adapter(windows[t][None])
            mean_torch, _ = learner.policy(torch.tensor(obs[:, t]), z)
        np.testing.assert_allclose(mean_np, mean_torch.numpy(), atol=1e-5)
        prev = actions[:, t]
    e = np.asarray(robot_vector(TEST_ROBOTS[1], ("joint_gains",)), np.float32)
    privileged = NumpyRMAPolicy(learner.rma_weights("v", adaptive=False))
    with torch.no_grad():
        mean_torch, _ = learner.policy(torch.tensor(obs[:, 0]), learner.extrinsics(torch.tensor(e)[None]))
    actions_np, _ = privileged.sample(obs[:, 0], rng, deterministic=True, context=e)
    np.testing.assert_allclose(actions_np, mean_torch.numpy(), atol=1e-5)


def test_regression_targets_are_the_encoders_latent_of_each_batchs_robot():
    torch.manual_seed(2)
    learner = RMALearner(SPEC, config(), tasks(4, 0))
    e = np.asarray(robot_vector(TEST_ROBOTS[2], ("joint_gains",)), np.float32)
    mask = np.ones((2, 5), np.float32)
    mask[1, 3:] = 0
    batch = Batch(np.zeros((2, 5, 4), np.float32), np.zeros((2, 5, 2), np.float32), np.zeros((2, 5), np.float32),
                  np.zeros((2, 5), np.float32), mask, np.zeros(2, bool), tasks(1, 0)[0], TEST_ROBOTS[2], "v",
                  "support", context=e)
    x, target = learner.regression_data([batch])
    assert x.shape == (8, 3 * 6 + 4)  # the 8 valid steps
    with torch.no_grad():
        expected = learner.extrinsics(torch.tensor(e))
    np.testing.assert_allclose(target.numpy(), expected.expand(8, -1).numpy(), atol=1e-6)


def test_resume_round_trips_every_network(trained):
    learner, _, _ = trained
    torch.manual_seed(3)
    other = RMALearner(SPEC, config(), tasks(24, 0))
    other.load_state_dict(deepcopy(learner.state_dict()))
    a, b = learner.policy_weights("v").arrays, other.policy_weights("v").arrays
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
