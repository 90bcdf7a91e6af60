"""RobotRuntime: a verified policy directory on a Robot behind the safety layer; nothing unpickled."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.robot import Robot, Step
from deploy.runtime import RobotRuntime
from deploy.safety import ObservationSchemaError, SafetyConfig
from deploy.sim_robot import SimRobot
from policy.artifact import ArtifactError
from tests.deploy.tamper import edit_manifest, flip_weights_bit, reseal
from tests.fakes import make_policy_dir

ROOT = Path(__file__).resolve().parents[2]
HORIZON = 20
GOAL = {"goal": [0.6, 0.1, 0.4]}


class FakeRobot:
    """A scripted robot: observation i comes from `observations[i]`; records every action it gets."""

    def __init__(self, observations, shape=(20,)):
        self.observation_shape = shape
        self.action_low, self.action_high = -np.ones(3, np.float32), np.ones(3, np.float32)
        self.observations, self.actions, self.t = observations, [], 0

    def reset(self, task=None, seed=None):
        self.t = 0
        return self.observations[0]

    def observe(self):
        return self.observations[self.t]

    def act(self, action):
        self.actions.append(np.array(action))
        self.t += 1
        return Step(self.observations[self.t], -1.0, self.t == len(self.observations) - 1, {"success": False})

    def close(self):
        pass


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return make_policy_dir(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def sim_robot():
    robot = SimRobot(horizon=HORIZON)
    yield robot
    robot.close()


def test_runs_an_episode_on_a_sim_robot_deterministically(policy_dir, sim_robot):
    assert isinstance(sim_robot, Robot)
    runtime = RobotRuntime(policy_dir)
    first = runtime.run_episode(sim_robot, task=GOAL, seed=3)
    assert first["steps"] == HORIZON and first["done"] is True
    assert np.isfinite(first["return"]) and first["return"] < 0
    assert set(first) >= {"return", "steps", "success", "safe_stops", "clipped", "rate_limited"}
    assert first["safe_stops"] == 0
    assert first == runtime.run_episode(sim_robot, task=GOAL, seed=3)


def test_stochastic_actions_follow_the_episode_seed(policy_dir, sim_robot):
    runtime = RobotRuntime(policy_dir, deterministic=False)
    a, b = (runtime.run_episode(sim_robot, task=GOAL, seed=5, max_steps=5) for _ in range(2))
    assert a == b and a["steps"] == 5


def test_actions_sent_are_bounded_and_rate_limited(tmp_path):
    runtime = RobotRuntime(make_policy_dir(tmp_path, head_scale=20.0), SafetyConfig(max_action_rate=0.25))
    rng = np.random.default_rng(1)
    robot = FakeRobot([rng.normal(0, 3, 20).astype(np.float32) for _ in range(30)])
    result = runtime.run_episode(robot)
    sent = np.stack(robot.actions)
    assert len(sent) == HORIZON and result["clipped"] > 0 and result["rate_limited"] > 0
    assert (np.abs(sent) <= 1).all()
    assert (np.abs(np.diff(np.vstack([np.zeros(3), sent]), axis=0)) <= 0.25 + 1e-6).all()


def test_wrong_observation_size_is_a_clear_schema_error(policy_dir):
    robot = FakeRobot([np.zeros(20, np.float32), np.zeros(19, np.float32), np.zeros(20, np.float32)])
    with pytest.raises(ObservationSchemaError, match=r"shape \(19,\).*expected \(20,\)"):
        RobotRuntime(policy_dir).run_episode(robot)
    assert len(robot.actions) == 1  # the bad observation produced no action
    with pytest.raises(ObservationSchemaError, match=r"robot observes shape \(7,\).*expects \(20,\)"):
        RobotRuntime(policy_dir).run_episode(FakeRobot([np.zeros(7)] * 3, shape=(7,)))


def test_nan_observation_is_a_safe_stop_and_never_reaches_the_policy(policy_dir):
    runtime = RobotRuntime(policy_dir)
    seen = []
    sample = runtime.policy.sample
    runtime.policy.sample = lambda obs, *a, **k: (seen.append(obs.copy()), sample(obs, *a, **k))[1]
    good = np.full(20, 0.3, np.float32)
    bad = good.copy()
    bad[4] = np.nan
    robot = FakeRobot([good, good, bad, good, good])
    result = runtime.run_episode(robot)
    assert result["safe_stops"] == 1 and result["steps"] == 4
    assert np.abs(robot.actions[1]).max() > 0.1  # moving when the bad observation came
    # the default safe stop ramps to the hold (10 steps): the first step, not a jump to action zero
    np.testing.assert_allclose(robot.actions[2], 0.9 * robot.actions[1], atol=1e-6)
    assert len(seen) == 3 and all(np.isfinite(obs).all() for obs in seen)


def test_pickles_in_the_policy_dir_are_never_unpickled(tmp_path, sim_robot):
    class Canary:
        def __init__(self, path):
            self.path = path

        def __reduce__(self):  # unpickling calls open(path, "w"): the canary file appears
            return open, (self.path, "w")

    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Canary(str(proof))))
    assert proof.exists()  # the canary works

    policy = make_policy_dir(tmp_path / "policy")
    canary = tmp_path / "canary"
    for name in ("policy.pkl", "weights.pt", "model.pkl"):
        (policy / name).write_bytes(pickle.dumps(Canary(str(canary))))
    runtime = RobotRuntime(policy)
    runtime.run_episode(sim_robot, task=GOAL, seed=0, max_steps=3)
    assert not canary.exists()


def test_tampered_or_inconsistent_artifacts_are_refused(tmp_path):
    policy = make_policy_dir(tmp_path / "a")
    flip_weights_bit(policy)
    with pytest.raises(ArtifactError, match=r"content sha256 .* does not match the content_sha256"):
        RobotRuntime(policy)

    def wrong_shape(manifest):
        manifest["spaces"]["observation"]["shape"] = [21]

    other = make_policy_dir(tmp_path / "b")
    edit_manifest(other, wrong_shape)
    with pytest.raises(ArtifactError, match="the manifest or the weights changed"):
        RobotRuntime(other)
    reseal(other)  # a consistent digest over an inconsistent manifest: the schema check still refuses it
    with pytest.raises(ArtifactError, match="do not fit the network"):
        RobotRuntime(other)
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        RobotRuntime(tmp_path / "missing")


def test_robot_side_imports_nothing_of_the_training_stack():
    modules = ("deploy.runtime", "deploy.safety", "deploy.robot", "deploy.wire", "deploy.bridge_server",
               "deploy.bridge_client", "deploy.connect", "policy.artifact", "metafleet.robot_commands")
    forbidden = ("torch", "ray", "mlflow", "pybullet", "gymnasium", "learner", "workers", "fleet", "deploy.sim_robot")
    code = (f"import sys, {', '.join(modules)}\n"
            f"loaded = [m for m in {forbidden!r} if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
