"""Joint-space action mode of the arm envs (families ``reach_joint`` and ``push_joint``): gymnasium API,
same tasks and observations as the ee families, determinism, joint-delta semantics, success definitions
(a damped-least-squares joint controller reaches goals), guards."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fleet
from fleet.envs.arm import MAX_JOINT_DELTA
from fleet.envs.push import PushEnv
from fleet.envs.push_task import BLOCK_START
from fleet.envs.reach import ReachEnv
from fleet.envs.reach_task import GOAL_CENTER, GOAL_HALF_EXTENTS
from fleet.robots import RobotSpec

ARMS = ("kuka_iiwa", "panda")
GOAL_A = {"goal": [0.70, 0.10, 0.35]}
PUSH_TASK = {"goal": [0.65, 0.05], "block_mass": 0.5, "block_friction": 0.6}


def arm(model: str) -> RobotSpec:
    return RobotSpec(robot_id=f"{model}-0", model=model)


def rollout(env, actions: np.ndarray, seed: int, task: dict) -> tuple[np.ndarray, np.ndarray]:
    """Observations (reset + one per action) and rewards of one episode."""
    obs, _ = env.reset(seed=seed, options={"task": task})
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, _, _, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
    return np.array(observations), np.array(rewards)


def dls_action(env, obs: np.ndarray, goal: list[float], damping: float = 0.05) -> np.ndarray:
    """Joint deltas moving the end effector toward ``goal``: damped least squares on the position Jacobian
    (computed here from pybullet, not by the env), scaled into the action box."""
    base = env.unwrapped
    dofs = base._ik_dofs  # calculateJacobian wants every movable joint (the panda's fingers too)
    positions = [state[0] for state in base._bullet.getJointStates(base._body, dofs)]
    zeros = [0.0] * len(dofs)
    linear, _ = base._bullet.calculateJacobian(base._body, base._model.ee_link, [0.0, 0.0, 0.0], positions,
                                               zeros, zeros)
    jac = np.asarray(linear)[:, [dofs.index(j) for j in base._joints]]
    error = np.asarray(goal) - obs[base.obs_slices["ee_pos"]]
    dq = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(3), error)
    return np.clip(dq / base.max_joint_delta, -1.0, 1.0).astype(np.float32)


@pytest.mark.parametrize(("env_class", "model"), itertools.product((ReachEnv, PushEnv), ARMS))
def test_check_env_passes(env_class, model):
    env = env_class(arm(model), action_mode="joint")
    check_env(env)
    assert env.action_space.shape == (7,) and env.action_mode == "joint"
    env.close()


@pytest.mark.parametrize(("ee_name", "joint_name", "ee_dims"), [("reach", "reach_joint", 3), ("push", "push_joint", 2)])
def test_joint_families_keep_tasks_and_observations_of_their_ee_family(ee_name, joint_name, ee_dims):
    ee_family, joint_family = fleet.get_family(ee_name), fleet.get_family(joint_name)
    assert joint_family.param_names == ee_family.param_names and joint_family.robot_kinds == ee_family.robot_kinds
    for seed in range(3):
        a, b = (f.sample_params(np.random.default_rng(seed)) for f in (ee_family, joint_family))
        assert a == b
    ee_env, joint_env = (fleet.make_env(name, arm("panda"), horizon=5) for name in (ee_name, joint_name))
    assert ee_env.observation_space == joint_env.observation_space
    assert ee_env.obs_slices == joint_env.obs_slices
    assert ee_env.action_space.shape == (ee_dims,) and joint_env.action_space.shape == (7,)
    assert (ee_env.unwrapped.action_mode, joint_env.unwrapped.action_mode) == ("ee", "joint")
    for env in (ee_env, joint_env):
        env.close()


@pytest.mark.parametrize(("env_class", "task", "model"),
                         [(ReachEnv, GOAL_A, "kuka_iiwa"), (PushEnv, PUSH_TASK, "panda")])
def test_deterministic_under_seed_across_envs_and_resets(env_class, task, model):
    actions = np.random.default_rng(2).uniform(-1, 1, size=(25, 7)).astype(np.float32)
    actions[:, 3] = 1.0  # stretches the elbow: the panda's hand sweeps forward into the block (pushed ~20 cm)
    env = env_class(arm(model), action_mode="joint")
    first = rollout(env, actions, seed=3, task=task)
    second = rollout(env, actions, seed=3, task=task)
    fresh = rollout(env_class(arm(model), action_mode="joint"), actions, seed=3, task=task)
    for other in (second, fresh):
        np.testing.assert_array_equal(first[0], other[0])
        np.testing.assert_array_equal(first[1], other[1])
    assert not np.array_equal(first[0], rollout(env, actions, seed=4, task=task)[0])
    if env_class is PushEnv:  # contacts replay too
        block = env.obs_slices["block_pos"]
        assert np.linalg.norm(first[0][-1, block] - first[0][0, block]) > 0.1
    env.close()


@pytest.mark.parametrize("model", ARMS)
def test_full_action_moves_a_joint_by_about_max_joint_delta_per_step_and_zero_holds(model):
    env = ReachEnv(arm(model), action_mode="joint", joint_noise=0.0)
    q = env.obs_slices["joint_pos"]
    start = env.reset(seed=0)[0][q]
    for _ in range(10):
        obs = env.step(np.zeros(7, dtype=np.float32))[0]
    assert np.abs(obs[q] - start).max() < 1e-3  # position targets hold the arm against gravity
    for joint in range(7):
        before = env.reset(seed=0)[0][q]
        action = np.zeros(7, dtype=np.float32)
        action[joint] = -1.0
        for _ in range(6):  # the panda's heavy joints (87 Nm motors) need a few steps to reach speed
            before, after = env.step(action)[0][q], before
        moved = after - before
        assert 0.8 * MAX_JOINT_DELTA < moved[joint] < 1.3 * MAX_JOINT_DELTA, (joint, moved)
        assert np.abs(np.delete(moved, joint)).max() < 0.2 * MAX_JOINT_DELTA, (joint, moved)
    env.close()


def test_targets_stay_within_joint_limits():
    env = ReachEnv(action_mode="joint", horizon=200)
    env.reset(seed=0)
    action = np.zeros(7, dtype=np.float32)
    action[1] = 1.0  # the KUKA's shoulder: its limit (2.09 rad) is ~30 steps away
    for _ in range(60):
        obs = env.step(action)[0]
    assert obs[env.obs_slices["joint_pos"]][1] <= env._upper[1] + 0.01
    env.close()


@pytest.mark.parametrize("model", ARMS)
def test_joint_controller_reaches_every_goal_region_corner_and_success_is_5_cm(model):
    env = fleet.make_env("reach_joint", arm(model), horizon=50)
    for corner in itertools.product((-1, 1), repeat=3):
        goal = [c + s * h for c, s, h in zip(GOAL_CENTER, corner, GOAL_HALF_EXTENTS, strict=True)]
        obs, info = env.reset(seed=0, options={"task": {"goal": goal}})
        assert not info["success"]
        for _ in range(env.horizon):
            obs, reward, _, _, info = env.step(dls_action(env, obs, goal))
            assert "guard" not in info
            assert info["success"] == (info["distance"] < 0.05)
            assert info["distance"] == pytest.approx(math.dist(obs[:3], goal), abs=1e-5)
            if info["success"]:
                assert reward == pytest.approx(1.0 - info["distance"])
                break
        assert info["success"], (model, corner, info["distance"])
    env.close()


def test_far_goal_reports_no_success():
    env = ReachEnv(action_mode="joint")
    env.reset(seed=0, options={"task": {"goal": [-0.5, 0.3, 0.9]}})
    for _ in range(5):
        _, reward, _, _, info = env.step(np.zeros(7, dtype=np.float32))
        assert not info["success"] and info["distance"] > 1.0 and reward == pytest.approx(-info["distance"])
    env.close()


@pytest.mark.parametrize("model", ARMS)
def test_push_success_is_still_block_goal_distance(model):
    env = PushEnv(arm(model), action_mode="joint")
    at_block = {**PUSH_TASK, "goal": list(BLOCK_START)}
    env.reset(seed=0, options={"task": at_block})
    _, reward, _, _, info = env.step(np.zeros(7, dtype=np.float32))
    assert info["success"] and info["distance"] < 0.005
    assert reward == pytest.approx(1.0 - info["distance"] - env.hand_weight * info["hand_distance"])
    env.reset(seed=0, options={"task": {**PUSH_TASK, "goal": [0.72, 0.12]}})
    _, _, _, _, info = env.step(np.zeros(7, dtype=np.float32))
    assert not info["success"] and info["distance"] > 0.2
    env.close()


@pytest.mark.parametrize("family", ["reach_joint", "push_joint"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_guard_trips_on_nonfinite_actions(family, bad):
    env = fleet.make_env(family, arm("kuka_iiwa"), horizon=20)
    env.reset(seed=0, options={"task": fleet.get_family(family).sample_params(np.random.default_rng(0))})
    action = np.zeros(7, dtype=np.float32)
    action[2] = bad
    obs, reward, _, truncated, info = env.step(action)
    assert info["guard"] == "nonfinite_action" and truncated and reward == 0.0 and np.isfinite(obs).all()
    obs, _, _, _, info = env.step(np.full(7, 0.5, dtype=np.float32))
    assert "guard" not in info and np.isfinite(obs).all() and env.trips == 1
    _, _, _, _, info = env.unwrapped.step(action)  # unguarded, the env replaces and flags it itself
    assert info["nonfinite_action"] is True
    env.close()


def test_default_mode_is_ee_and_bad_mode_arguments_are_rejected():
    actions = np.random.default_rng(1).uniform(-1, 1, size=(10, 3)).astype(np.float32)
    default, explicit = ReachEnv(), ReachEnv(action_mode="ee")
    assert default.action_mode == "ee" and default.action_space.shape == (3,)
    np.testing.assert_array_equal(rollout(default, actions, 0, GOAL_A)[0], rollout(explicit, actions, 0, GOAL_A)[0])
    with pytest.raises(ValueError, match=r"action_mode must be one of \('ee', 'joint'\), got 'torque'"):
        ReachEnv(action_mode="torque")
    with pytest.raises(ValueError, match="max_joint_delta"):
        ReachEnv(action_mode="joint", max_joint_delta=0.0)
