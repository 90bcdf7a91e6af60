"""PushEnv and PushFamily: gymnasium API, bounds, hidden params, determinism, pushing, guards, robot kinds."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fleet
from fleet.envs.push import PushEnv
from fleet.envs.push_family import PushFamily
from fleet.envs.push_task import BLOCK_FRICTION_RANGE, BLOCK_MASS_RANGE, BLOCK_START, GOAL_CENTER, GOAL_HALF_EXTENTS
from fleet.robots import ROBOT_MODELS, RobotModel, RobotSpec

ARMS = ("kuka_iiwa", "panda")
TASK_A = {"goal": [0.70, 0.08], "block_mass": 0.4, "block_friction": 0.5}
TASK_B = {"goal": [0.60, -0.10], "block_mass": 0.4, "block_friction": 0.5}


def arm(model: str, **kwargs) -> RobotSpec:
    return RobotSpec(robot_id=f"{model}-test", model=model, **kwargs)


def rollout(env: PushEnv, actions: np.ndarray, seed: int, task: dict) -> tuple[np.ndarray, np.ndarray]:
    """Observations (reset + one per action) and rewards of one episode."""
    obs, _ = env.reset(seed=seed, options={"task": task})
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, _, _, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
    return np.array(observations), np.array(rewards)


def scripted_push(env: PushEnv, task: dict, steps: int = 40) -> tuple[float, float]:
    """Go behind the block on the goal line (around it if needed), then aim through it at the goal.

    Returns (start, best) block-goal distance.
    """
    obs, info = env.reset(seed=0, options={"task": task})
    goal, block_slice = np.asarray(task["goal"]), env.obs_slices["block_pos"]
    start = best = info["distance"]
    for _ in range(steps):
        hand, block = obs[:2], obs[block_slice][:2]
        to_goal = goal - block
        remaining = np.linalg.norm(to_goal)
        direction = to_goal / remaining
        along = (hand - block) @ direction
        lateral = hand - block - along * direction
        speed = 1.0
        if along < -0.03 and np.linalg.norm(lateral) < 0.015:  # behind, on the line: push through the block
            target, speed = block + 0.02 * direction, min(1.0, remaining / 0.06)
        elif along < -0.03:  # behind but off the line: line up
            target = block - 0.07 * direction
        else:  # beside or in front: go round the block on the side the hand is on
            side = lateral / (np.linalg.norm(lateral) + 1e-9)
            target = block + 0.08 * side - 0.04 * direction
        action = np.clip((target - hand) / env.max_delta, -1.0, 1.0) * (speed if remaining > 0.015 else 0.0)
        obs, _, _, _, info = env.step(action)
        best = min(best, info["distance"])
    return start, best


@pytest.fixture(scope="module", params=ARMS)
def env(request):
    env = PushEnv(arm(request.param), horizon=30)
    yield env
    env.close()


def test_check_env_passes_for_both_arms_and_registered_id():
    for model in ARMS:
        made = gymnasium.make("metafleet/Push-v0", robot=arm(model), horizon=5)
        check_env(made.unwrapped, skip_render_check=True)
        made.close()


def test_fleet_make_env_builds_guarded_push_env():
    env = fleet.make_env("push", arm("panda"), horizon=7)
    assert isinstance(env.unwrapped, PushEnv) and env.unwrapped.horizon == 7
    env.set_task(TASK_A)
    assert env.unwrapped.get_task() == TASK_A
    env.close()


def test_observation_bounds_finite_and_respected(env):
    space = env.observation_space
    assert space.dtype == np.float32 and space.shape == (26,)
    assert np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))
    assert env.action_space.shape == (2,)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    for _ in range(70):  # crosses episode boundaries (horizon 30)
        assert obs.dtype == np.float32 and space.contains(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        if truncated:
            obs, _ = env.reset()


def test_hand_starts_behind_block_at_pushing_height_and_stays_there(env):
    obs, info = env.reset(seed=0, options={"task": TASK_A})
    block = obs[env.obs_slices["block_pos"]]
    assert block[:2] == pytest.approx(BLOCK_START, abs=1e-4)
    assert 0.08 < info["hand_distance"] < 0.12 and obs[0] < block[0]
    heights = [env.step(np.array([0.0, 1.0], dtype=np.float32))[0][2] for _ in range(8)]
    assert max(abs(h - env.push_height) for h in heights) < 0.01


def test_task_params_are_hidden_from_observation():
    actions = np.random.default_rng(1).uniform(-1, 1, size=(15, 2)).astype(np.float32)
    env = PushEnv(arm("kuka_iiwa"))
    obs_a, rewards_a = rollout(env, actions, seed=5, task=TASK_A)
    obs_b, rewards_b = rollout(env, actions, seed=5, task=TASK_B)
    np.testing.assert_array_equal(obs_a, obs_b)  # a different goal changes only the reward
    assert not np.allclose(rewards_a, rewards_b)
    env.close()


def test_deterministic_under_seed_across_envs_and_resets():
    actions = np.tile(np.array([[1.0, 0.2]], dtype=np.float32), (25, 1))  # pushes the block
    env = PushEnv(arm("panda"))
    first = rollout(env, actions, seed=3, task=TASK_A)
    second = rollout(env, actions, seed=3, task=TASK_A)
    fresh_env = PushEnv(arm("panda"), render_mode="rgb_array")  # the goal marker is visual-only
    fresh = rollout(fresh_env, actions, seed=3, task=TASK_A)
    for other in (second, fresh):
        np.testing.assert_array_equal(first[0], other[0])
        np.testing.assert_array_equal(first[1], other[1])
    assert not np.array_equal(first[0], rollout(env, actions, seed=4, task=TASK_A)[0])
    env.close()
    fresh_env.close()


@pytest.mark.parametrize("model", ARMS)
def test_scripted_pushing_brings_block_to_goal(model):
    env = PushEnv(arm(model), horizon=50)
    family, rng = PushFamily(), np.random.default_rng(1)
    results = [scripted_push(env, family.sample_params(rng), steps=50) for _ in range(12)]
    env.close()
    successes = sum(best < env.success_radius for _, best in results)
    assert all(best < start - 0.05 for start, best in results), results  # always well towards the goal
    assert successes >= 10, results  # a crude scripted pusher, not an optimal one


def test_block_mass_and_friction_change_the_dynamics():
    actions = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (12, 1))  # a fast shove along x
    env = PushEnv(arm("kuka_iiwa"))
    block = env.obs_slices["block_pos"]
    base = rollout(env, actions, seed=0, task=TASK_A)[0][-1, block]
    for change in ({"block_mass": 1.0}, {"block_friction": 1.0}):
        varied = rollout(env, actions, seed=0, task={**TASK_A, **change})[0][-1, block]
        assert not np.allclose(base, varied, atol=1e-3), change
    assert env._bullet.getDynamicsInfo(env._block, -1)[0] == pytest.approx(TASK_A["block_mass"])
    env.close()


def test_robot_variation_changes_pushing():
    actions = np.tile(np.array([[1.0, 0.3]], dtype=np.float32), (10, 1))
    base = rollout(PushEnv(arm("panda")), actions, seed=0, task=TASK_A)[0]
    for spec in (arm("panda", link_mass_scale=2.0), arm("panda", joint_damping=10.0), arm("panda", motor_strength=0.3)):
        assert not np.allclose(base, rollout(PushEnv(spec), actions, seed=0, task=TASK_A)[0])


def test_reward_is_block_distance_hand_penalty_and_bonus(env):
    _, info = env.reset(seed=0, options={"task": TASK_A})
    _, reward, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert not info["success"]
    assert reward == pytest.approx(-info["distance"] - env.hand_weight * info["hand_distance"])
    env.set_task({**TASK_A, "goal": list(BLOCK_START)})  # goal under the block: a success at once
    _, reward, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["success"] and info["distance"] < 0.01
    assert reward == pytest.approx(env.success_bonus - info["distance"] - env.hand_weight * info["hand_distance"])


def test_guard_signals_are_raw_and_trip_the_guard_on_an_exploding_block():
    env = fleet.make_env("push", arm("kuka_iiwa"), horizon=20)
    env.reset(seed=0, options={"task": TASK_A})
    base = env.unwrapped
    signals = base.guard_signals()
    assert set(signals) == set(base.guard_limits)
    assert all(lo <= signals[k] <= hi for k, (lo, hi) in base.guard_limits.items()), signals
    base._bullet.resetBaseVelocity(base._block, [50.0, 0.0, 0.0])  # what a blown-up contact looks like
    _, reward, _, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["guard"] == "block_speed" and truncated and reward == 0.0
    assert base.get_task() == TASK_A  # the guard reset the env to the same task
    env.close()


def test_nonfinite_action_is_replaced_and_flagged(env):
    env.reset(seed=0)
    obs, reward, _, _, info = env.step(np.array([np.nan, 0.5], dtype=np.float32))
    assert info["nonfinite_action"] is True and np.all(np.isfinite(obs)) and math.isfinite(reward)


def test_set_task_validates_params(env):
    bad_params = ({}, {"goal": [0.6, 0.0]}, {**TASK_A, "goal": [0.6, 0.0, 0.1]}, {**TASK_A, "block_mass": 0.0},
                  {**TASK_A, "block_friction": float("nan")}, {**TASK_A, "extra": 1})
    for bad in bad_params:
        with pytest.raises(ValueError, match="push"):
            env.set_task(bad)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"goal": [0.6, 0.0]})


def test_render_returns_uint8_frame():
    env = PushEnv(arm("panda"), render_mode="rgb_array", render_size=(80, 60))
    env.reset(seed=0, options={"task": TASK_A})
    frame = env.render()
    assert frame.shape == (60, 80, 3) and frame.dtype == np.uint8
    env.reset(seed=0, options={"task": TASK_B})
    assert not np.array_equal(frame, env.render())  # only the goal marker moved
    env.close()


def test_family_samples_documented_ranges_and_keeps_splits_apart():
    family = PushFamily()
    assert family.name == "push" and family.robot_kinds == ("arm",)
    assert family.param_names == ("goal", "block_mass", "block_friction")
    rng = np.random.default_rng(0)
    for params in (family.sample_params(rng) for _ in range(200)):
        for c, h, x in zip(GOAL_CENTER, GOAL_HALF_EXTENTS, params["goal"], strict=True):
            assert c - h <= x <= c + h
        assert BLOCK_MASS_RANGE[0] <= params["block_mass"] <= BLOCK_MASS_RANGE[1]
        assert BLOCK_FRICTION_RANGE[0] <= params["block_friction"] <= BLOCK_FRICTION_RANGE[1]
    assert family.too_close(TASK_A, {**TASK_A, "block_mass": 0.401})
    assert not family.too_close(TASK_A, {**TASK_A, "block_mass": 0.6})
    dist = fleet.TaskDistribution("push", num_train=20, num_test=5, seed=0)
    assert all(not family.too_close(t.params, s.params) for t in dist.test_tasks for s in dist.train_tasks)


def test_wrong_robot_kind_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(ROBOT_MODELS, "walker", RobotModel(name="walker", urdf="x.urdf", ee_link=0, home=(0.0,),
                                                           description="test legged robot", kind="quadruped"))
    robot = RobotSpec(robot_id="walker-1", model="walker")
    with pytest.raises(ValueError, match=r"'push'.*\('arm',\).*'walker-1'.*'quadruped'"):
        PushFamily().make_env(robot, horizon=10)
    with pytest.raises(ValueError, match=r"needs an arm.*'walker-1'.*'quadruped'"):
        PushEnv(robot)
