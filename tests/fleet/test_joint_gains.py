"""Joint gains (motor polarity, strength, failure) of the fleet's robots: RobotSpec validation, the privileged
robot vector, fleet-spec sampling, the envs applying them, the robot-adaptation exam families and their probe."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fleet
from fleet.envs.arm import MAX_JOINT_DELTA
from fleet.envs.locomotion import LocomotionEnv
from fleet.envs.reach import ReachEnv
from fleet.envs.robot_reach import RobotReachEnv
from fleet.fleetspec import FleetSpecError, check_fleet_families, load_fleet_file, parse_fleet
from fleet.robots import (
    MAX_JOINT_DAMPING,
    MAX_JOINTS,
    ROBOT_PARAMS,
    RobotSpec,
    check_robot_params,
    robot_param_dim,
    robot_vector,
)
from fleet.tasks import TaskDistribution

ROOT = Path(__file__).resolve().parents[2]
KUKA_GAINS = (1.0, -1.0, 0.5, 1.0, 0.0, 1.2, -2.0)
SAMPLER = {"uniform": [0.5, 1.2], "reversed": 0.3, "failed": 0.1}


def cheetah(gains: tuple[float, ...] = ()) -> RobotSpec:
    return RobotSpec(robot_id="cheetah-0", model="half_cheetah", joint_gains=gains)


# ------------------------------------------------------------------------------------------- RobotSpec
def test_gains_are_stored_as_floats_and_round_trip_through_json():
    spec = RobotSpec(robot_id="kuka-1", joint_gains=[1, -1, 0.5, 1, 0, 1.2, -2])  # a list, as from YAML
    assert spec.joint_gains == KUKA_GAINS and all(type(g) is float for g in spec.joint_gains)
    assert hash(spec) == hash(RobotSpec(robot_id="kuka-1", joint_gains=KUKA_GAINS))  # frozen, hashable
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["joint_gains"] == list(KUKA_GAINS)
    assert RobotSpec.from_dict(data) == spec
    assert RobotSpec().joint_gains == () and RobotSpec().gains == (1.0,) * 7
    assert cheetah().gains == (1.0,) * 6


@pytest.mark.parametrize(("gains", "fragments"), [
    ((1.0,) * 6, ["'kuka-0'", "6 entries", "expected 7"]),
    ((1.0,) * 8, ["'kuka-0'", "8 entries", "expected 7"]),
    ((2.5, 1, 1, 1, 1, 1, 1), ["[-2, 2]", "2.5"]),
    ((math.nan,) * 7, ["finite"]),
    ((True,) * 7, ["finite"]),
    ("1111111", ["list of numbers"]),
    (1.0, ["list of numbers"]),
])
def test_bad_gains_are_rejected(gains, fragments):
    with pytest.raises(ValueError) as err:
        RobotSpec(joint_gains=gains)
    for fragment in fragments:
        assert fragment in str(err.value)


# ------------------------------------------------------------------------------------------- robot vector
def test_robot_vector_against_hand_numbers():
    spec = RobotSpec(link_mass_scale=1.5, joint_damping=5.0, motor_strength=0.8, joint_gains=KUKA_GAINS)
    assert MAX_JOINTS == 12 and MAX_JOINT_DAMPING == 20.0
    assert ROBOT_PARAMS == {"link_mass_scale": 1, "joint_damping": 1, "motor_strength": 1, "joint_gains": 12}
    assert robot_vector(spec, ["motor_strength", "link_mass_scale", "joint_damping"]) == pytest.approx(
        (-0.2, 0.5, 0.25))
    gains = robot_vector(spec, ["joint_gains"])
    assert gains == (1.0, -1.0, 0.5, 1.0, 0.0, 1.2, -2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert robot_vector(RobotSpec(), ["joint_gains", "link_mass_scale"]) == (1.0,) * 12 + (0.0,)
    assert robot_param_dim(["joint_gains", "motor_strength"]) == 13
    assert len(robot_vector(cheetah(), list(ROBOT_PARAMS))) == robot_param_dim(list(ROBOT_PARAMS)) == 15


@pytest.mark.parametrize(("keys", "fragments"), [
    (["mass"], ["'mass'", "link_mass_scale", "joint_gains"]),
    ([], ["non-empty"]),
    (["joint_gains", "joint_gains"], ["repeated", "joint_gains"]),
    ("joint_gains", ["non-empty list"]),
])
def test_bad_robot_params_are_named(keys, fragments):
    for call in (check_robot_params, robot_param_dim, lambda k: robot_vector(RobotSpec(), k)):
        with pytest.raises(ValueError) as err:
            call(keys)
        for fragment in fragments:
            assert fragment in str(err.value)


# ------------------------------------------------------------------------------------------- fleet spec
def test_sampled_gains_are_seeded_per_joint_with_plausible_reversals_and_failures():
    entries = [{"model": "kuka_iiwa", "id": "k", "count": 200, "joint_gains": SAMPLER}]
    fleet_a = parse_fleet(entries, seed=0)
    assert fleet_a == parse_fleet(entries, seed=0) and fleet_a != parse_fleet(entries, seed=1)
    gains = np.array([r.joint_gains for r in fleet_a.train])
    assert gains.shape == (200, 7)
    alive = gains[gains != 0.0]
    assert np.all((np.abs(alive) >= 0.5) & (np.abs(alive) <= 1.2))
    assert np.mean(gains == 0.0) == pytest.approx(0.1, abs=0.03)
    assert np.mean(alive < 0) == pytest.approx(0.3, abs=0.04)
    assert len({tuple(row) for row in gains}) == 200  # drawn per robot, and per joint:
    assert np.std(gains, axis=1).min() > 0


def test_listed_gains_and_gains_leave_the_other_sampled_keys_unchanged():
    base = {"model": "half_cheetah", "id": "c", "count": 3, "link_mass_scale": {"uniform": [0.8, 1.2]}}
    plain = parse_fleet([base], seed=2)
    geared = parse_fleet([{**base, "joint_gains": SAMPLER}], seed=2)
    assert [r.link_mass_scale for r in plain.train] == [r.link_mass_scale for r in geared.train]
    listed = parse_fleet([{**base, "joint_gains": [1, -1, 0, 1, 1, 0.5]}], seed=2)
    assert all(r.joint_gains == (1.0, -1.0, 0.0, 1.0, 1.0, 0.5) for r in listed.train)
    assert parse_fleet([{**base, "joint_gains": {"uniform": [0.9, 0.9]}}], 0).train[0].joint_gains == (0.9,) * 6


@pytest.mark.parametrize(("gains", "fragments"), [
    ([1, 1], ["fleet.robots[0].joint_gains", "2 entries", "expected 7", "'k'"]),
    ({"uniform": [0.5, 2.5]}, ["fleet.robots[0].joint_gains.uniform", "<= 2"]),
    ({"uniform": [1.2, 0.5]}, ["joint_gains.uniform", "lo <= hi"]),
    ({"uniform": [-0.5, 1]}, ["joint_gains.uniform", "0 <= lo"]),
    ({"uniform": [1]}, ["joint_gains.uniform", "two numbers"]),
    ({"uniform": [0.5, 1], "reversed": 1.5}, ["fleet.robots[0].joint_gains.reversed", "[0, 1]"]),
    ({"uniform": [0.5, 1], "failed": -0.1}, ["joint_gains.failed", "[0, 1]"]),
    ({"uniform": [0.5, 1], "flipped": 0.1}, ["fleet.robots[0].joint_gains", "reversed"]),
    ({"reversed": 0.1}, ["fleet.robots[0].joint_gains", "uniform"]),
    (0.5, ["fleet.robots[0].joint_gains", "list of 7 numbers"]),
])
def test_bad_gain_entries_name_the_entry_and_key(gains, fragments):
    with pytest.raises(FleetSpecError) as err:
        parse_fleet([{"model": "kuka_iiwa", "id": "k", "joint_gains": gains}], seed=0)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize(("path", "model"), [("configs/fleets/kuka-gains.yaml", "kuka_iiwa"),
                                             ("configs/fleets/cheetah-gains.yaml", "half_cheetah")])
def test_exam_fleet_files(path, model):
    loaded = load_fleet_file(ROOT / path)
    assert 24 <= len(loaded.train) <= 48 and 8 <= len(loaded.test) <= 12
    assert loaded.models == (model,) and all(r.joint_gains for r in loaded.robots)
    assert any(g < 0 for r in loaded.test for g in r.joint_gains)


def test_ee_families_refuse_a_geared_fleet_at_config_time():
    geared = parse_fleet([{"model": "kuka_iiwa", "id": "k", "joint_gains": SAMPLER}], seed=0)
    with pytest.raises(ValueError, match=r"'reach'.*end-effector.*joint_gains"):
        check_fleet_families(["reach"], geared, horizon=10)
    for family in ("reach_joint", "push_joint", "robot_reach"):  # joint-mode families take it
        check_fleet_families([family], geared, horizon=10)


# ------------------------------------------------------------------------------------------- envs
def joint_step(env: ReachEnv, joint: int, sign: float) -> float:
    """How far ``joint`` moves in one step of action ``sign`` on that joint alone, from the same reset."""
    env.reset(seed=0, options={"task": {"goal": [0.6, 0.0, 0.4]}})
    before = env._raw_q[joint]
    action = np.zeros(7, dtype=np.float32)
    action[joint] = sign
    env.step(action)
    return float(env._raw_q[joint] - before)


def test_arm_applies_a_reversed_gain_and_a_failed_motor_in_joint_mode():
    gains = (1.0, -1.0, 1.0, 0.5, 0.0, 1.0, 1.0)
    plain = ReachEnv(action_mode="joint")
    geared = ReachEnv(RobotSpec(joint_gains=gains), action_mode="joint")
    try:
        nominal = joint_step(plain, 1, 1.0)
        assert nominal > 0.3 * MAX_JOINT_DELTA
        assert joint_step(geared, 1, 1.0) < -0.3 * MAX_JOINT_DELTA  # the same action moves it the other way
        # exactly what the nominal arm does under the action times the gain (the same motor targets)
        for joint, gain in enumerate(gains):
            assert joint_step(geared, joint, 1.0) == pytest.approx(joint_step(plain, joint, gain), abs=1e-9)
        assert abs(joint_step(geared, 4, 1.0)) < 0.05 * abs(joint_step(plain, 4, 1.0))  # failed: stays put
    finally:
        plain.close()
        geared.close()


def test_ee_mode_refuses_gains():
    with pytest.raises(ValueError, match=r"ee mode.*'kuka-0'.*joint space only"):
        ReachEnv(RobotSpec(joint_gains=KUKA_GAINS))
    with pytest.raises(ValueError, match="joint_gains"):
        fleet.make_env("reach", RobotSpec(joint_gains=KUKA_GAINS), 10)


def cheetah_rollout(env: LocomotionEnv, actions: np.ndarray) -> np.ndarray:
    env.reset(seed=0, options={"task": {"variant": 0.5}})
    return np.array([env.step(action)[0] for action in actions])


def test_cheetah_failed_motor_has_no_effect_and_a_reversed_one_mirrors_the_action():
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 6)).astype(np.float32)
    other = actions.copy()
    other[:, 2] = -other[:, 2]  # only the failed joint's (bfoot) action differs
    failed = LocomotionEnv(cheetah((1.0, 1.0, 0.0, 1.0, 1.0, 1.0)), task="robot_run")
    reversed_ = LocomotionEnv(cheetah((1.0, 1.0, -1.0, 1.0, 1.0, 1.0)), task="robot_run")
    plain = LocomotionEnv(cheetah(), task="robot_run")
    try:
        np.testing.assert_array_equal(cheetah_rollout(failed, actions), cheetah_rollout(failed, other))
        assert failed._forces[2] == 0.0 and plain._forces[2] > 0
        # a reversed bfoot under `actions` moves exactly as the nominal cheetah under `other`
        np.testing.assert_allclose(cheetah_rollout(reversed_, actions), cheetah_rollout(plain, other), atol=1e-5)
        assert not np.allclose(cheetah_rollout(plain, actions), cheetah_rollout(plain, other))
    finally:
        for env in (failed, reversed_, plain):
            env.close()


# ------------------------------------------------------------------------------------------- families
def test_exam_families_are_listed_and_build_with_the_documented_spaces():
    assert {"robot_reach", "robot_run"} <= set(fleet.FAMILIES)
    reach = fleet.make_env("robot_reach", RobotSpec(joint_gains=KUKA_GAINS), 50)
    run = fleet.make_env("robot_run", cheetah((1.0, -1.0, 0.0, 1.0, 0.7, 1.0)), 100)
    try:
        assert reach.observation_space.shape == (23,) and reach.action_space.shape == (7,)
        assert reach.unwrapped.obs_slices["goal_delta"] == slice(20, 23) and reach.unwrapped.horizon == 50
        goal = [0.65, 0.1, 0.35]
        obs, _ = reach.reset(seed=0, options={"task": {"goal": goal}})
        np.testing.assert_allclose(obs[20:23], np.subtract(goal, obs[:3]), atol=1e-6)
        obs, reward, _, _, info = reach.step(np.zeros(7, dtype=np.float32))
        assert reward == pytest.approx(-info["distance"]) and info["distance"] == pytest.approx(
            float(np.linalg.norm(obs[20:23])), abs=1e-5)
        assert run.observation_space.shape == (17,) and run.action_space.shape == (6,)
        run.reset(seed=0, options={"task": {"variant": 0.3}})
        assert run.step(np.zeros(6, dtype=np.float32))[4]["target_velocity"] == pytest.approx(1.0)
    finally:
        reach.close()
        run.close()
    check_env(RobotReachEnv(RobotSpec(joint_gains=KUKA_GAINS)))
    with pytest.raises(ValueError, match="joint space only"):
        RobotReachEnv(action_mode="ee")


def test_exam_families_split_tasks_as_usual():
    reach = TaskDistribution("robot_reach", num_train=5, num_test=3, seed=0)
    joint = TaskDistribution("reach_joint", num_train=5, num_test=3, seed=0)
    assert [t.params for t in reach.train_tasks] == [t.params for t in joint.train_tasks]
    run = TaskDistribution("robot_run", num_train=4, num_test=2, seed=0)
    assert len({t.params["variant"] for t in run.train_tasks + run.test_tasks}) == 6
    with pytest.raises(ValueError, match="variant"):
        fleet.get_family("robot_run").validate({"speed": 0.5})


# ------------------------------------------------------------------------------------------- probe
def load_probe():
    spec = importlib.util.spec_from_file_location("robot_exam_probe", ROOT / "benchmarks" / "robot_exam_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_runs_on_a_tiny_setting(tmp_path):
    probe = load_probe()
    out = tmp_path / "probe.json"
    assert probe.main(["--max-robots", "2", "--goals", "1", "--horizon", "30", "--out", str(out)]) == 0
    reports = {r["family"]: r for r in json.loads(out.read_text())["reports"]}
    assert set(reports) == {"robot_reach", "robot_run"}
    reach, run = reports["robot_reach"]["summary"], reports["robot_run"]["summary"]
    assert {"oracle", "agnostic", "success_gap", "valid"} <= set(reach)
    assert 0.0 <= reach["oracle"]["success"] <= 1.0 and reports["robot_reach"]["robots"] == 2
    assert math.isfinite(run["nominal_speed"]) and math.isfinite(run["agnostic"]["speed"])


def test_probe_oracle_reaches_with_a_reversed_joint_the_agnostic_does_not():
    probe = load_probe()
    robot = RobotSpec(robot_id="flipped", joint_gains=(-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    row = probe.probe_robot("robot_reach", robot, [[0.7, 0.15, 0.35]], horizon=50)
    assert row["oracle"]["success"] == 1.0 and row["agnostic"]["success"] == 0.0


def test_retarget_turns_an_env_into_another_robot_of_the_same_body_exactly():
    """A worker serves many robots that differ only in their motors with one env: after retarget the env behaves
    bit for bit as one built for the new robot; a robot of another body is refused (nothing changes)."""
    import fleet
    from fleet.robots import RobotSpec, same_body

    a = RobotSpec(robot_id="a", joint_gains=(1.0, -0.5, 1.0, 0.0, 1.0, 1.0, 0.7))
    b = RobotSpec(robot_id="b", joint_gains=(-1.0, 0.8, 1.0, 1.0, 0.6, -1.0, 1.0))
    heavy = RobotSpec(robot_id="h", link_mass_scale=1.3)
    assert same_body(a, b) and not same_body(a, heavy)
    task = {"goal": [0.6, 0.1, 0.35]}
    for family in ("robot_reach", "robot_run"):
        model = "kuka_iiwa" if family == "robot_reach" else "half_cheetah"
        n = 7 if model == "kuka_iiwa" else 6
        a2, b2 = (RobotSpec(robot_id=r.robot_id, model=model, joint_gains=r.joint_gains[:n]) for r in (a, b))
        reused, fresh = fleet.make_env(family, a2, 20), fleet.make_env(family, b2, 20)
        params = task if family == "robot_reach" else {"variant": 0.5}
        reused.reset(seed=1, options={"task": params})
        for _ in range(5):  # an env that has served its first robot
            reused.step(np.ones(reused.action_space.shape))
        assert reused.retarget(b2) and reused.robot == b2
        assert not reused.retarget(RobotSpec(robot_id="h", model=model, link_mass_scale=1.3))
        runs = []
        for env in (reused, fresh):
            obs, _ = env.reset(seed=3, options={"task": params})
            rng = np.random.default_rng(0)
            trace = [obs]
            for _ in range(10):
                trace.append(env.step(rng.uniform(-1, 1, env.action_space.shape))[0])
            runs.append(np.stack(trace))
            env.close()
        np.testing.assert_array_equal(runs[0], runs[1])
