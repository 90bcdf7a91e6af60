"""LocomotionEnv and the velocity / direction / dynamics families on the half-cheetah and the A1 quadruped."""

from __future__ import annotations

import itertools
import math
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fleet
from fleet.envs.locomotion import GUARD_LIMITS, LocomotionEnv
from fleet.envs.locomotion_families import DirectionFamily, DynamicsFamily, VelocityFamily
from fleet.envs.locomotion_tasks import GAITS
from fleet.robots import RobotSpec
from fleet.tasks import TaskDistribution, get_family

CHEETAH = RobotSpec(robot_id="cheetah-0", model="half_cheetah")
A1 = RobotSpec(robot_id="a1-0", model="a1")
ROBOTS = {"half_cheetah": CHEETAH, "a1": A1}
FAMILIES = ("velocity", "direction", "dynamics")
HEALTHY = {"payload": 0.0, "friction": 1.0, "weak_joint": 0, "weak_strength": 1.0}


def make(robot: RobotSpec, family: str = "velocity", horizon: int = 20) -> LocomotionEnv:
    return get_family(family).make_env(robot, horizon)


def episode(env: LocomotionEnv, actions: np.ndarray, seed: int, task: dict) -> tuple[np.ndarray, np.ndarray, list]:
    """Observations (reset + one per step), rewards and infos of one episode, stopping at termination."""
    obs, _ = env.reset(seed=seed, options={"task": task})
    observations, rewards, infos = [obs], [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards), infos


def trot(steps: int, dt: float, freq: float = 2.5) -> np.ndarray:
    """An open-loop diagonal trot for the A1 (legs FR, FL, RR, RL) as actions (window: home ± 0.6 rad)."""
    actions = np.zeros((steps, 12))
    for t in range(steps):
        for leg in range(4):
            phase = 2 * math.pi * freq * t * dt + (0.0 if leg in (0, 3) else math.pi)
            actions[t, leg * 3 + 1] = -0.35 * math.sin(phase) / 0.6
            actions[t, leg * 3 + 2] = -0.6 * max(0.0, math.cos(phase)) / 0.6
    return actions


@pytest.fixture(scope="module")
def cheetah():
    env = make(CHEETAH, horizon=30)
    yield env
    env.close()


@pytest.fixture(scope="module")
def a1():
    env = make(A1, horizon=30)
    yield env
    env.close()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model", ["half_cheetah", "a1"])
def test_check_env_passes_for_every_family_and_robot(family, model):
    env = make(ROBOTS[model], family)
    env.set_task(get_family(family).sample_params(np.random.default_rng(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning is a failure
        check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_gymnasium_ids_and_fleet_make_env(family):
    made = gymnasium.make(f"metafleet/{family.capitalize()}-v0", robot=A1, horizon=3)
    assert isinstance(made.unwrapped, LocomotionEnv) and made.unwrapped.family.name == family
    made.reset(seed=0)
    assert [made.step(made.action_space.sample())[3] for _ in range(3)] == [False, False, True]
    made.close()
    env = fleet.make_env(family, CHEETAH, horizon=5)
    assert isinstance(env.unwrapped, LocomotionEnv) and env.unwrapped.horizon == 5
    env.close()


def test_spaces_are_finite_and_hide_position_and_task(cheetah, a1):
    assert cheetah.observation_space.shape == (17,) and cheetah.action_space.shape == (6,)
    assert a1.observation_space.shape == (33,) and a1.action_space.shape == (12,)
    for env in (cheetah, a1):
        space = env.observation_space
        assert space.dtype == np.float32 and np.isfinite(space.low).all() and np.isfinite(space.high).all()
        assert sum(s.stop - s.start for s in env.obs_slices.values()) == space.shape[0]


@pytest.mark.parametrize("model", ["half_cheetah", "a1"])
def test_observations_stay_in_bounds_under_random_actions(model):
    env = make(ROBOTS[model], horizon=40)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    for _ in range(100):  # crosses episode ends
        assert env.observation_space.contains(obs)
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert math.isfinite(reward)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


def test_deterministic_under_seed_and_seed_matters(a1):
    actions = np.random.default_rng(2).uniform(-0.3, 0.3, size=(25, 12))
    first = episode(a1, actions, seed=3, task={"speed": 0.4})
    again = episode(a1, actions, seed=3, task={"speed": 0.4})
    fresh_env = make(A1, horizon=30)
    fresh = episode(fresh_env, actions, seed=3, task={"speed": 0.4})
    fresh_env.close()
    for other in (again, fresh):
        np.testing.assert_array_equal(first[0], other[0])
        np.testing.assert_array_equal(first[1], other[1])
    assert not np.array_equal(first[0], episode(a1, actions, seed=4, task={"speed": 0.4})[0])


def test_velocity_target_is_hidden_and_shapes_the_reward(cheetah):
    actions = np.random.default_rng(1).uniform(-1, 1, size=(20, 6))
    obs_slow, rewards_slow, infos = episode(cheetah, actions, seed=0, task={"speed": 0.1})
    obs_fast, rewards_fast, _ = episode(cheetah, actions, seed=0, task={"speed": 0.9})
    np.testing.assert_array_equal(obs_slow, obs_fast)
    assert not np.allclose(rewards_slow, rewards_fast)
    # reward = -|v - v*| - 0.05 |a|^2 with v* = speed * 2 m/s on the cheetah
    v, a = infos[5]["forward_velocity"], np.clip(actions[5], -1, 1)
    assert rewards_slow[5] == pytest.approx(-abs(v - 0.2) - 0.05 * float(a @ a))
    assert infos[5]["target_velocity"] == pytest.approx(0.2)


def test_forward_velocity_is_base_displacement_over_time(cheetah):
    _, _, infos = episode(cheetah, np.full((10, 6), 0.5), seed=0, task={"speed": 0.5})
    for before, after in itertools.pairwise(infos):
        assert after["forward_velocity"] == pytest.approx(
            (after["x_position"] - before["x_position"]) / cheetah.action_dt)


def test_direction_flips_the_reward_sign():
    env = make(CHEETAH, "direction")
    actions = np.random.default_rng(4).uniform(-1, 1, size=(15, 6))
    _, forward, infos = episode(env, actions, seed=1, task={"direction": 1, "variant": 0.3})
    _, backward, _ = episode(env, actions, seed=1, task={"direction": -1, "variant": 0.7})
    env.close()
    ctrl = 0.05 * (np.clip(actions, -1, 1) ** 2).sum(axis=1)
    velocity = np.array([info["forward_velocity"] for info in infos])
    np.testing.assert_allclose(forward, velocity - ctrl, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(backward, -velocity - ctrl, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("change", [{"payload": 3.0}, {"friction": 0.5}, {"weak_joint": 1, "weak_strength": 0.0}])
def test_dynamics_params_change_the_motion(change):
    env = make(A1, "dynamics", horizon=60)
    actions = trot(40, env.action_dt)
    healthy = episode(env, actions, seed=0, task=HEALTHY)[0]
    changed = episode(env, actions, seed=0, task={**HEALTHY, **change})[0]
    back = episode(env, actions, seed=0, task=HEALTHY)[0]  # set_task restores the body completely
    env.close()
    assert np.abs(healthy - changed).max() > 1e-2
    np.testing.assert_array_equal(healthy, back)


def test_weak_joint_wraps_around_the_robots_joint_count(cheetah):
    env = make(CHEETAH, "dynamics")
    env.set_task({**HEALTHY, "weak_joint": 7, "weak_strength": 0.0})  # joint 7 % 6 = 1 on the cheetah
    assert env._forces[1] == 0.0 and env._forces[0] == pytest.approx(120.0)
    env.close()


def test_a1_stands_still_with_zero_action_and_trots_forward(a1):
    _, _, infos = episode(a1, np.zeros((60, 12)), seed=0, task={"speed": 0.5})
    assert len(infos) == 30 and abs(infos[-1]["x_position"]) < 0.05
    env = make(A1, horizon=60)
    obs, _, infos = episode(env, trot(60, env.action_dt), seed=0, task={"speed": 0.8})
    env.close()
    assert len(infos) == 60 and infos[-1]["x_position"] > 0.5  # ~0.4 m/s for 2 s, still standing
    assert obs[-1][0] > 0.2


def test_quadruped_terminates_when_it_falls_cheetah_never(a1, cheetah):
    a1.reset(seed=0, options={"task": {"speed": 0.5}})
    a1._bullet.resetBasePositionAndOrientation(a1._body, [0, 0, 0.3], a1._bullet.getQuaternionFromEuler([2.0, 0, 0]))
    _, _, terminated, truncated, _ = a1.step(np.zeros(12))
    assert terminated and not truncated
    cheetah.reset(seed=0)
    cheetah._bullet.resetJointState(cheetah._body, 2, math.pi)  # upside down
    for _ in range(29):
        assert not cheetah.step(np.ones(6))[2]


def test_variation_of_the_robot_spec_is_applied():
    spec = RobotSpec(robot_id="a1-heavy", model="a1", link_mass_scale=1.5, joint_damping=0.5, motor_strength=0.8)
    base, heavy = make(A1), make(spec)
    assert heavy._bullet.getDynamicsInfo(heavy._body, -1)[0] == pytest.approx(
        1.5 * base._bullet.getDynamicsInfo(base._body, -1)[0], rel=1e-4)
    np.testing.assert_allclose(heavy._forces, 0.8 * np.asarray(base._forces))
    damped = make(RobotSpec(robot_id="a1-damped", model="a1", joint_damping=20.0))
    actions = trot(20, base.action_dt)
    # pybullet does not report jointDamping back: check that it acts
    plain_obs, damped_obs = (episode(env, actions, 0, {"speed": 0.5})[0] for env in (base, damped))
    assert np.abs(plain_obs - damped_obs).max() > 1e-2
    for env in (base, heavy, damped):
        env.close()


@pytest.mark.parametrize("model", ["half_cheetah", "a1"])
def test_largest_fleet_damping_stays_stable(model):
    env = make(RobotSpec(robot_id="damped", model=model, joint_damping=20.0), horizon=60)
    scale = 0.3 if model == "a1" else 1.0
    _, _, infos = episode(env, np.random.default_rng(0).uniform(-scale, scale, (60, *env.action_space.shape)), 0,
                          {"speed": 0.5})
    assert env.guard_signals()["joint_speed"] < 50 and len(infos) > 10
    env.close()


def test_cheetah_masses_follow_mujoco():
    env = make(CHEETAH)
    total = sum(env._bullet.getDynamicsInfo(env._body, link)[0] for link in range(16))
    env.close()
    assert total == pytest.approx(14.0, abs=0.05)


def test_guard_signals_stay_within_limits_while_walking_and_trip_on_a_blow_up(cheetah, a1):
    for env in (cheetah, a1):
        assert env.guard_limits == GUARD_LIMITS
        env.reset(seed=0)
        env.action_space.seed(1)
        for _ in range(30):
            scale = 0.3 if env is a1 else 1.0
            _, _, terminated, _, _ = env.step(scale * env.action_space.sample())
            signals = env.guard_signals()
            assert set(signals) == set(GUARD_LIMITS)
            assert all(lo <= signals[k] <= hi for k, (lo, hi) in GUARD_LIMITS.items()), signals
            if terminated:
                break
    a1.reset(seed=0)
    a1._bullet.resetJointState(a1._body, 3, 0.9, 1e4)  # a corrupted, exploding state
    a1.step(np.zeros(12))
    assert a1.guard_signals()["joint_speed"] > GUARD_LIMITS["joint_speed"][1]
    cheetah.reset(seed=0)
    cheetah._bullet.resetJointState(cheetah._body, 0, 0.0, 500.0)  # the root flung forward at 500 m/s
    cheetah.step(np.zeros(6))
    assert cheetah.guard_signals()["base_speed"] > GUARD_LIMITS["base_speed"][1]


def test_nonfinite_action_is_replaced_and_flagged(cheetah):
    cheetah.reset(seed=0)
    obs, reward, _, _, info = cheetah.step(np.full(6, np.nan))
    assert info["nonfinite_action"] and np.isfinite(obs).all() and math.isfinite(reward)


def test_arms_are_rejected_with_the_supported_kinds():
    kuka = RobotSpec(robot_id="kuka-3", model="kuka_iiwa")
    for family in FAMILIES:
        with pytest.raises(ValueError, match=r"'kuka-3'.*'kuka_iiwa'.*kind 'arm'.*planar, quadruped"):
            get_family(family).make_env(kuka, 10)
    with pytest.raises(ValueError, match="kind 'arm'"):
        LocomotionEnv(kuka)


@pytest.mark.parametrize(("family", "params", "match"), [
    ("velocity", {"speed": 1.5}, r"'speed' must be in \[0.0, 1.0\]"),
    ("velocity", {"goal": 1.0}, r"exactly keys \['speed'\]"),
    ("direction", {"direction": 0, "variant": 0.1}, "must be 1 or -1"),
    ("dynamics", {**HEALTHY, "weak_joint": 12}, r"'weak_joint' must be an int in \[0, 12\)"),
    ("dynamics", {**HEALTHY, "friction": float("nan")}, "'friction' must be a finite number"),
])
def test_bad_task_params_are_named(family, params, match, cheetah):
    with pytest.raises(ValueError, match=match):
        get_family(family).validate(params)
    if family == "velocity":
        with pytest.raises(ValueError, match=match):
            cheetah.reset(options={"task": params})


def test_families_draw_valid_disjoint_task_splits():
    for family in (VelocityFamily(), DirectionFamily(), DynamicsFamily()):
        dist = TaskDistribution(family.name, num_train=50, num_test=20, seed=0)
        for task in dist.train_tasks + dist.test_tasks:
            assert family.validate(task.params) == task.params
        assert family.robot_kinds == ("planar", "quadruped")
    directions = TaskDistribution("direction", num_train=50, num_test=20, seed=0)
    assert {t.params["direction"] for t in directions.test_tasks} == {1, -1}  # both directions held out
    dynamics = TaskDistribution("dynamics", num_train=200, num_test=0, seed=0)
    failed = sum(t.params["weak_strength"] == 0.0 for t in dynamics.train_tasks)
    assert 25 <= failed <= 75  # about a quarter of the bodies have a failed motor


def test_gaits_scale_speed_per_kind():
    assert GAITS["planar"].top_speed == 2.0 and GAITS["quadruped"].alive_bonus > 0


def test_render_follows_the_robot():
    env = LocomotionEnv(A1, horizon=5, render_mode="rgb_array", render_size=(32, 24))
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8 and frame.std() > 0
    env.close()


def test_guard_wrapper_passes_normal_running_and_trips_on_a_blow_up():
    env = fleet.make_env("velocity", CHEETAH, horizon=50)
    env.reset(seed=0, options={"task": {"speed": 0.5}})
    env.action_space.seed(0)
    for _ in range(50):
        _, _, _, _, info = env.step(env.action_space.sample())
        assert "guard" not in info
    assert env.trips == 0
    inner = env.unwrapped
    inner._bullet.resetJointState(inner._body, 4, 0.0, 1e4)  # a corrupted, exploding joint
    _, _, _, truncated, info = env.step(np.zeros(6))
    assert truncated and info.get("guard") and env.trips == 1
    env.close()
