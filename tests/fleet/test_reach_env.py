"""ReachEnv: gymnasium API, bounds, hidden goal, determinism, guards, reachability, rendering."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fleet
from fleet.envs.guard import GuardWrapper
from fleet.envs.reach import ReachEnv
from fleet.envs.reach_family import ReachFamily
from fleet.envs.reach_task import GOAL_CENTER, GOAL_HALF_EXTENTS
from fleet.robots import ROBOT_MODELS, RobotModel, RobotSpec

GOAL_A = {"goal": [0.70, 0.10, 0.35]}
GOAL_B = {"goal": [0.45, -0.15, 0.48]}


def rollout(env: ReachEnv, actions: np.ndarray, seed: int, task: dict) -> tuple[np.ndarray, np.ndarray]:
    """Observations (reset + one per action) and rewards of one episode."""
    obs, _ = env.reset(seed=seed, options={"task": task})
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, _, _, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
    return np.array(observations), np.array(rewards)


def scripted_steps_to_success(env: ReachEnv, task: dict, seed: int = 0) -> int | None:
    """Steps a proportional end-effector controller needs to reach the goal; None if it never does."""
    goal = np.asarray(task["goal"])
    obs, _ = env.reset(seed=seed, options={"task": task})
    for step in range(1, env.horizon + 1):
        obs, _, _, _, info = env.step(np.clip((goal - obs[:3]) / env.max_delta, -1.0, 1.0))
        if info["success"]:
            return step
    return None


@pytest.fixture
def env():
    env = ReachEnv()
    yield env
    env.close()


def test_check_env_passes_on_raw_and_made_env():
    made = gymnasium.make("metafleet/Reach-v0")
    check_env(made.unwrapped)
    made.close()
    with pytest.warns(UserWarning, match="different from the unwrapped"):
        check_env(gymnasium.make("metafleet/Reach-v0"))


def test_make_passes_robot_and_horizon_through():
    made = gymnasium.make("metafleet/Reach-v0", robot=RobotSpec(robot_id="kuka-7"), horizon=3)
    assert made.unwrapped.robot.robot_id == "kuka-7"
    made.reset(seed=0)
    truncations = [made.step(made.action_space.sample())[3] for _ in range(3)]
    assert truncations == [False, False, True]
    made.close()


def test_fleet_make_env_builds_reach():
    env = fleet.make_env("reach", RobotSpec(), horizon=7)
    assert isinstance(env.unwrapped, ReachEnv) and env.horizon == 7
    env.close()


def test_reach_family_rejects_robots_that_are_not_arms(monkeypatch):
    monkeypatch.setitem(ROBOT_MODELS, "roller", RobotModel(name="roller", urdf="x.urdf", ee_link=0, home=(0.0,),
                                                           description="test planar robot", kind="planar"))
    assert ReachFamily().robot_kinds == ("arm",)
    with pytest.raises(ValueError, match=r"'reach'.*\('arm',\).*'roller-1'.*'planar'"):
        ReachFamily().make_env(RobotSpec(robot_id="roller-1", model="roller"), horizon=10)


def test_guard_signals_are_raw_and_in_range_and_drive_the_guard():
    env = fleet.make_env("reach", RobotSpec(), horizon=20)
    env.reset(seed=0, options={"task": GOAL_A})
    base = env.unwrapped
    for _ in range(3):
        _, _, _, _, info = env.step(np.ones(3, dtype=np.float32))
        assert "guard" not in info
    signals = base.guard_signals()
    assert set(signals) == set(base.guard_limits)
    assert all(lo <= signals[k] <= hi for k, (lo, hi) in base.guard_limits.items()), signals
    velocities = [state[1] for state in base._bullet.getJointStates(base._body, range(7))]
    assert signals["joint_speed"] == pytest.approx(max(abs(v) for v in velocities)) and signals["joint_speed"] > 0
    env.close()
    strict = ReachEnv()
    strict.guard_limits = {**strict.guard_limits, "ee_speed": (0.0, 0.05)}  # a moving hand now "explodes"
    guarded = GuardWrapper(strict)
    guarded.reset(seed=0, options={"task": GOAL_A})
    _, reward, _, truncated, info = guarded.step(np.ones(3, dtype=np.float32))
    assert info["guard"] == "ee_speed" and truncated and reward == 0.0
    strict.close()


def test_observation_bounds_finite_and_respected(env):
    space = env.observation_space
    assert space.dtype == np.float32 and space.shape == (20,)
    assert np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    for _ in range(120):  # crosses episode boundaries (horizon 50)
        assert obs.dtype == np.float32 and space.contains(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        if truncated:
            obs, _ = env.reset()


def test_goal_is_hidden_from_observation():
    actions = np.random.default_rng(1).uniform(-1, 1, size=(20, 3)).astype(np.float32)
    env_a, env_b = ReachEnv(), ReachEnv()
    obs_a, rewards_a = rollout(env_a, actions, seed=5, task=GOAL_A)
    obs_b, rewards_b = rollout(env_b, actions, seed=5, task=GOAL_B)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.allclose(rewards_a, rewards_b)


def test_deterministic_under_seed_across_envs_and_resets():
    actions = np.random.default_rng(2).uniform(-1, 1, size=(30, 3)).astype(np.float32)
    env = ReachEnv()
    first = rollout(env, actions, seed=3, task=GOAL_A)
    second = rollout(env, actions, seed=3, task=GOAL_A)  # same env, after a reset
    fresh = rollout(ReachEnv(render_mode="rgb_array"), actions, seed=3, task=GOAL_A)  # marker is visual-only
    for other in (second, fresh):
        np.testing.assert_array_equal(first[0], other[0])
        np.testing.assert_array_equal(first[1], other[1])
    other_seed = rollout(env, actions, seed=4, task=GOAL_A)
    assert not np.array_equal(first[0], other_seed[0])  # the seed drives the home-pose noise


def test_home_pose_puts_end_effector_at_goal_region_centre_pointing_down():
    env = ReachEnv(joint_noise=0.0)
    obs, info = env.reset(seed=0)
    assert math.dist(obs[:3], GOAL_CENTER) < 0.005
    assert info["distance"] == pytest.approx(math.dist(obs[:3], env.get_task()["goal"]), abs=1e-6)
    orientation = env._bullet.getLinkState(env._body, 6)[5]
    z_axis = np.asarray(env._bullet.getMatrixFromQuaternion(orientation)).reshape(3, 3)[:, 2]
    assert z_axis[2] < -0.999  # flange axis points straight down
    env.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_action_is_replaced_and_flagged(env, bad):
    env.reset(seed=0)
    obs, reward, _, _, info = env.step(np.array([bad, 0.5, 0.0], dtype=np.float32))
    assert info["nonfinite_action"] is True
    assert np.all(np.isfinite(obs)) and math.isfinite(reward)
    obs, _, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert info["nonfinite_action"] is False and np.all(np.isfinite(obs))


def test_reward_is_negative_distance_plus_success_bonus(env):
    env.reset(seed=0, options={"task": GOAL_A})
    _, reward, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert not info["success"] and reward == pytest.approx(-info["distance"])
    home_ee = env.reset(seed=0)[0][:3].tolist()
    env.set_task({"goal": home_ee})  # goal at the end effector: every step succeeds
    _, reward, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert info["success"] and reward == pytest.approx(env.success_bonus - info["distance"])


def test_scripted_controller_reaches_sampled_goals_from_both_splits():
    dist = fleet.TaskDistribution("reach", num_train=10, num_test=10, seed=11)
    env = ReachEnv()
    steps = {t.task_id: scripted_steps_to_success(env, t.params) for t in dist.train_tasks + dist.test_tasks}
    env.close()
    assert all(s is not None for s in steps.values()), steps
    assert max(steps.values()) <= 20, steps  # 0.3 m at most, 3 cm per step, plus tracking lag


@pytest.mark.parametrize("corner", [(-1, -1, -1), (-1, 0, -1), (1, 1, 1), (1, -1, -1), (-1, 1, 1)])
def test_scripted_controller_reaches_goal_region_corners(corner):
    goal = [c + s * h for c, s, h in zip(GOAL_CENTER, corner, GOAL_HALF_EXTENTS, strict=True)]
    env = ReachEnv()
    assert scripted_steps_to_success(env, {"goal": goal}) is not None
    env.close()


def test_reach_is_possible_for_varied_robots():
    spec = RobotSpec(robot_id="heavy-weak", link_mass_scale=1.5, joint_damping=5.0, motor_strength=0.5)
    env = ReachEnv(spec)
    assert scripted_steps_to_success(env, GOAL_A) is not None
    env.close()


def test_robot_variation_changes_dynamics_and_masses():
    actions = np.random.default_rng(3).uniform(-1, 1, size=(10, 3)).astype(np.float32)
    base, heavy = ReachEnv(), ReachEnv(RobotSpec(link_mass_scale=2.0))
    masses = [[e._bullet.getDynamicsInfo(e._body, link)[0] for link in range(-1, 7)] for e in (base, heavy)]
    np.testing.assert_allclose(masses[1], 2.0 * np.asarray(masses[0]))
    assert sum(masses[0]) > 0
    for spec in (RobotSpec(joint_damping=10.0), RobotSpec(motor_strength=0.3)):
        varied = rollout(ReachEnv(spec), actions, seed=0, task=GOAL_A)[0]
        assert not np.allclose(varied, rollout(base, actions, seed=0, task=GOAL_A)[0])


def test_set_task_validates_params(env):
    for bad in ({}, {"goal": [0.5, 0.0]}, {"goal": [0.5, 0.0, float("nan")]}, {"goal": [1, 2, 3], "x": 1}):
        with pytest.raises(ValueError):
            env.set_task(bad)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"goal": [0.5, 0.0, 0.4]})
    env.set_task({"goal": (0.5, 0, 0.4)})
    assert env.get_task() == {"goal": [0.5, 0.0, 0.4]}


def test_render_returns_uint8_frame_with_goal_marker():
    env = ReachEnv(render_mode="rgb_array", render_size=(160, 120))
    env.reset(seed=0, options={"task": GOAL_A})
    frame_a = env.render()
    assert frame_a.shape == (120, 160, 3) and frame_a.dtype == np.uint8
    env.reset(seed=0, options={"task": GOAL_B})
    assert not np.array_equal(frame_a, env.render())  # only the marker moved
    env.close()
    env.close()  # idempotent


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="horizon"):
        ReachEnv(horizon=0)
    with pytest.raises(ValueError, match="render_mode"):
        ReachEnv(render_mode="human")
    assert ReachEnv(robot={"robot_id": "from-dict"}).robot.robot_id == "from-dict"
