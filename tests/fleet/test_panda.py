"""The Franka panda: model entry, home pose, closed fingers, reach across the goal region, variation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fleet
from fleet.envs.reach import ReachEnv
from fleet.envs.reach_task import GOAL_CENTER, GOAL_HALF_EXTENTS
from fleet.robots import RobotSpec, get_robot_model

PANDA = RobotSpec(robot_id="panda-0", model="panda")
FINGERS = (9, 10)


def steps_to_reach(env: ReachEnv, goal: list[float], seed: int = 0) -> int | None:
    """Steps a proportional end-effector controller needs to reach ``goal``; None if it never does."""
    obs, _ = env.reset(seed=seed, options={"task": {"goal": goal}})
    for step in range(1, env.horizon + 1):
        obs, _, _, _, info = env.step(np.clip((np.asarray(goal) - obs[:3]) / env.max_delta, -1.0, 1.0))
        if info["success"]:
            return step
    return None


@pytest.fixture(scope="module")
def env():
    env = ReachEnv(PANDA, horizon=40)
    yield env
    env.close()


def test_panda_is_a_registered_arm_with_held_fingers():
    model = get_robot_model("panda")
    assert model.kind == "arm" and model.num_joints == 7
    assert dict(model.held_joints) == {9: 0.0, 10: 0.0}
    assert fleet.ROBOT_MODELS["panda"] is model


def test_check_env_passes(env):
    check_env(env, skip_render_check=True)


def test_observation_has_seven_arm_joints(env):
    assert env.observation_space.shape == (20,)
    assert env.obs_slices["joint_pos"] == slice(6, 13)
    space, joints = env.observation_space, env.obs_slices["joint_pos"]
    # panda joint 4 is limited to [-pi, 0] (the iiwa's to +-2.09)
    assert (space.low[joints][3], space.high[joints][3]) == pytest.approx((-math.pi, 0.0), abs=1e-3)


def test_home_pose_puts_hand_at_goal_region_centre_pointing_down():
    env = ReachEnv(PANDA, joint_noise=0.0)
    obs, _ = env.reset(seed=0)
    assert math.dist(obs[:3], GOAL_CENTER) < 0.005
    orientation = env._bullet.getLinkState(env._body, get_robot_model("panda").ee_link)[5]
    z_axis = np.asarray(env._bullet.getMatrixFromQuaternion(orientation)).reshape(3, 3)[:, 2]
    assert z_axis[2] < -0.999
    env.close()


def test_fingers_stay_closed_while_the_arm_moves(env):
    env.action_space.seed(0)
    env.reset(seed=0)
    for _ in range(30):
        env.step(env.action_space.sample())
    fingers = [state[0] for state in env._bullet.getJointStates(env._body, FINGERS)]
    assert max(abs(q) for q in fingers) < 1e-3


@pytest.mark.parametrize("corner", [(-1, -1, -1), (1, 1, -1), (1, -1, 1), (-1, 1, 1), (1, 0, 0), (0, 0, -1)])
def test_scripted_controller_reaches_goal_region_corners(env, corner):
    goal = [c + s * h for c, s, h in zip(GOAL_CENTER, corner, GOAL_HALF_EXTENTS, strict=True)]
    steps = steps_to_reach(env, goal)
    assert steps is not None and steps <= 30, (corner, steps)  # slower than the iiwa: lower joint speeds


def test_scripted_controller_reaches_sampled_goals(env):
    dist = fleet.TaskDistribution("reach", num_train=8, num_test=4, seed=3)
    steps = [steps_to_reach(env, t.params["goal"]) for t in dist.train_tasks + dist.test_tasks]
    assert all(s is not None for s in steps), steps


def test_deterministic_under_seed(env):
    actions = np.random.default_rng(2).uniform(-1, 1, size=(20, 3)).astype(np.float32)

    def run(target: ReachEnv, seed: int) -> np.ndarray:
        observations = [target.reset(seed=seed, options={"task": {"goal": [0.6, 0.1, 0.4]}})[0]]
        observations += [target.step(a)[0] for a in actions]
        return np.array(observations)

    fresh = ReachEnv(PANDA, horizon=40)
    np.testing.assert_array_equal(run(env, 3), run(fresh, 3))
    assert not np.array_equal(run(env, 3), run(env, 4))
    fresh.close()


def test_variation_scales_every_link_mass_and_changes_motion():
    base, heavy = ReachEnv(PANDA), ReachEnv(RobotSpec(robot_id="p", model="panda", link_mass_scale=2.0))
    links = range(-1, base._num_links)
    masses = [[e._bullet.getDynamicsInfo(e._body, link)[0] for link in links] for e in (base, heavy)]
    np.testing.assert_allclose(masses[1], 2.0 * np.asarray(masses[0]))
    assert masses[0][9] > 0  # the hand (link 8) is scaled too
    actions = np.tile(np.array([[1.0, -1.0, 1.0]], dtype=np.float32), (8, 1))
    weak = ReachEnv(RobotSpec(robot_id="w", model="panda", motor_strength=0.2))
    paths = []
    for target in (base, weak):
        target.reset(seed=0)
        paths.append([target.step(a)[0] for a in actions])
    assert not np.allclose(paths[0], paths[1])
    for target in (base, heavy, weak):
        target.close()


def test_guard_signals_match_limits_and_are_in_range(env):
    env.reset(seed=0)
    env.step(np.ones(3, dtype=np.float32))
    signals = env.guard_signals()
    assert set(signals) == set(env.guard_limits)
    assert all(lo <= signals[k] <= hi for k, (lo, hi) in env.guard_limits.items()), signals
    assert signals["joint_speed"] > 0 and signals["ee_position"] == pytest.approx(np.abs(env._raw_ee_pos).max())


def test_fleet_make_env_builds_reach_and_push_for_the_panda():
    for family in ("reach", "push"):
        made = fleet.make_env(family, PANDA, horizon=5)
        assert made.unwrapped.robot.model == "panda"
        made.reset(seed=0)
        made.step(made.action_space.sample())
        made.close()
