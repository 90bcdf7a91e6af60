"""The plugin protocol's optional parts (fleet/plugins.py): success at any or the last step, fixed task lists,
render_mode, failures that name family and task (EnvFailure), "no robot", and a plugin whose observation has
degenerate entries trained end to end through `fleet train` (Trust item 8)."""

from __future__ import annotations

import pickle
import re
import textwrap

import pytest
import torch

import fleet
from fleet.plugins import NO_ROBOT, PluginError
from fleet.tasks import TaskDistribution, get_family, success_rule
from learner.networks import GaussianMLPPolicy
from policy import PolicySpec
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool
from workers.worker import EnvFailure

SOURCE = '''
import gymnasium, numpy as np

class QuatEnv(gymnasium.Env):
    """Obs [x, quat w (always 1.0), x again, 0.0]: a constant, a duplicate and an all-zero column.
    Success ("near") holds only at step 2; a task {"boom": "reset"|"step"} makes that call raise."""
    def __init__(self, horizon, render_mode=None):
        self.observation_space = gymnasium.spaces.Box(-5, 5, (4,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)
        self.horizon, self.render_mode, self.task, self.t, self.x = horizon, render_mode, {}, 0, 0.0
    def set_task(self, params):
        self.task = params
    def obs(self):
        return np.array([self.x, 1.0, self.x, 0.0], np.float32)
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.task.get("boom") == "reset":
            raise RuntimeError("reset exploded")
        self.t, self.x = 0, float(self.np_random.uniform(-0.1, 0.1))
        return self.obs(), {}
    def step(self, action):
        if self.task.get("boom") == "step":
            raise ZeroDivisionError("step exploded")
        self.t += 1
        self.x = float(np.clip(self.x + 0.1 * float(action[0]), -5, 5))
        reward = -abs(self.x - self.task.get("goal", 0.0))
        return self.obs(), reward, False, self.t >= self.horizon, {"success": self.t == 2}

class Quat:
    name = "quat"
    def sample_params(self, rng):
        return {"goal": float(rng.uniform(-1, 1))}
    def make_env(self, horizon, render_mode=None):
        Quat.render_seen = render_mode
        return QuatEnv(horizon, render_mode)

class QuatAny(Quat):
    success_at = "any"

class Fixed(Quat):
    def train_tasks(self):
        return [{"goal": 0.1}, {"goal": 0.2}, {"goal": 0.3}]
    def test_tasks(self):
        return [{"goal": -0.5}]

class FixedClash(Fixed):
    def test_tasks(self):
        return [{"goal": 0.2}]

class BadRule(Quat):
    success_at = "sometimes"

class Broken(Quat):
    def make_env(self, horizon):
        raise OSError("no licence")
'''

CONFIG = """
name: quat-smoke
fleet: {family: "quat_plugin:Quat", num_train_tasks: 4, num_test_tasks: 2, horizon: 100}
workers: {backend: local, num_workers: 1}
learner: {algorithm: maml, hidden_sizes: [8], inner_lr: 0.1}
train: {iterations: 2, meta_batch_size: 2, episodes_per_task: 4, eval_every: 1, eval_tasks: 2, eval_episodes: 4,
        eval_steps: [0, 1]}
tracking: {registered_model: quat-smoke}
"""


@pytest.fixture
def quat(tmp_path, monkeypatch):
    (tmp_path / "quat_plugin.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "quat_plugin"


def sample(ref: str, params: dict, episodes: int = 2, horizon: int = 5):
    from fleet.tasks import Task

    torch.manual_seed(0)
    weights = GaussianMLPPolicy(PolicySpec(4, 1, (8,))).to_weights("w")
    task = Task(ref, f"{ref}/train/7", params)
    return LocalWorkerPool(1).sample([SampleRequest(task, fleet.RobotSpec(), "w", episodes, horizon, 0)],
                                     {"w": weights})[0]


@pytest.mark.parametrize(("obj", "expected"), [("Quat", False), ("QuatAny", True)])
def test_success_at_the_last_step_or_any_step(quat, obj, expected):
    ref = f"{quat}:{obj}"
    assert success_rule(ref) == ("any" if expected else "last")
    batch = sample(ref, {"goal": 0.0})  # info["success"] is True at step 2 of 5 only
    assert batch.success.tolist() == [expected, expected]


def test_builtin_families_and_unknown_names_count_the_last_step():
    assert success_rule("reach") == "last" and success_rule("point") == "last"


def test_success_at_must_be_last_or_any(quat):
    with pytest.raises(PluginError, match=r"success_at must be one of \('last', 'any'\), got 'sometimes'"):
        get_family(f"{quat}:BadRule")


def test_fixed_task_lists_replace_the_drawn_split(quat):
    ref = f"{quat}:Fixed"
    dist = TaskDistribution(ref, num_train=10, num_test=5, seed=0)
    assert [t.params for t in dist.train_tasks] == [{"goal": 0.1}, {"goal": 0.2}, {"goal": 0.3}]  # no padding
    assert [t.params for t in dist.test_tasks] == [{"goal": -0.5}]
    assert TaskDistribution(ref, num_train=2, num_test=1, seed=5).train_tasks == dist.train_tasks[:2]
    drawn = [t.params["goal"] for _ in range(20) for t in dist.sample(3)]
    assert set(drawn) == {0.1, 0.2, 0.3}  # sampling draws from the list, distinct within a batch
    with pytest.raises(PluginError, match=r"test task \{'goal': 0.2\} is also a train task"):
        get_family(f"{quat}:FixedClash")


def test_make_env_receives_render_mode_when_it_takes_it(quat):
    ref = f"{quat}:Quat"
    env = fleet.make_env(ref, fleet.RobotSpec(), horizon=3, render_mode="rgb_array")
    assert get_family(ref).plugin.render_seen == "rgb_array" and env.unwrapped.render_mode == "rgb_array"
    fleet.make_env(ref, fleet.RobotSpec(), horizon=3)
    assert get_family(ref).plugin.render_seen is None


def test_a_plugin_without_robot_says_so(quat):
    robot = fleet.RobotSpec()
    assert fleet.robot_label(f"{quat}:Quat", robot) == NO_ROBOT == "none (plugin env)"
    assert fleet.robot_label("examples.nav2d:Nav2D", robot) == NO_ROBOT
    assert fleet.robot_label("reach", robot) == "kuka_iiwa"


@pytest.mark.parametrize(("obj", "params", "call", "cause"), [
    ("Quat", {"boom": "reset"}, "env.reset", "RuntimeError: reset exploded"),
    ("Quat", {"boom": "step"}, "env.step", "ZeroDivisionError: step exploded"),
    ("Broken", {"goal": 0.0}, "make_env", "OSError: no licence"),
])
def test_plugin_env_failures_name_family_task_and_cause(quat, obj, params, call, cause):
    ref = f"{quat}:{obj}"
    with pytest.raises(EnvFailure) as info:
        sample(ref, params)
    message = str(info.value)
    assert f"task family {ref!r}: {call} raised on task '{ref}/train/7'" in message
    assert f"(params {params!r}".replace("'", '"') in message and message.endswith(cause)
    assert isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))  # crosses a Ray actor boundary as the pool's cause
    assert type(again) is EnvFailure and str(again) == message


def test_plugin_with_degenerate_observation_trains_end_to_end(quat, mlflow_uri, tmp_path, capsys):
    """Obs with a constant 1.0, a duplicate and an all-zero column: the linear baseline used to raise
    'input matrix is singular' at the first held-out evaluation."""
    from metafleet.cli import main

    (tmp_path / "quat.yaml").write_text(CONFIG)  # mlflow_uri moved the CWD to tmp_path
    code = main(["train", "quat.yaml"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert "singular" not in out.err
    # A plugin env has no robot: the banner, the run, the registry tag and the manifest say so.
    from mlflow.tracking import MlflowClient

    from policy.artifact import PolicyArtifact

    assert f"on quat_plugin:Quat/{NO_ROBOT}," in out.out
    client = MlflowClient(mlflow_uri, mlflow_uri)
    version = client.get_model_version("quat-smoke", "1")
    assert version.tags["robot"] == NO_ROBOT and client.get_run(version.run_id).data.tags["robot"] == NO_ROBOT
    local = client.download_artifacts(version.run_id, "policy", str(tmp_path / "pulled"))
    assert PolicyArtifact.load(local).manifest["robot_label"] == NO_ROBOT


def test_a_plugin_env_failure_is_a_clear_cli_error_and_a_failed_run(quat, mlflow_uri, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from metafleet.cli import main

    (tmp_path / "boom_plugin.py").write_text(textwrap.dedent('''
        from quat_plugin import Quat
        class Boom(Quat):
            def train_tasks(self):
                return [{"goal": 0.1, "boom": "step"}]
            def test_tasks(self):
                return [{"goal": -0.5}]
    '''))
    config = CONFIG.replace('"quat_plugin:Quat"', '"boom_plugin:Boom"').replace("eval_every: 1", "eval_every: 0")
    for key, value in (("num_train_tasks", 1), ("num_test_tasks", 1), ("meta_batch_size", 1), ("eval_tasks", 1)):
        config = re.sub(rf"{key}: \d+", f"{key}: {value}", config)
    (tmp_path / "boom.yaml").write_text(config)
    code = main(["train", "boom.yaml"])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert ("fleet: error: training failed (MLflow run marked FAILED): task family 'boom_plugin:Boom': env.step "
            "raised on task 'boom_plugin:Boom/train/0'") in err
    assert err.rstrip().endswith("ZeroDivisionError: step exploded")
    assert "Traceback" not in err
    client = MlflowClient(mlflow_uri, mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("metafleet").experiment_id])
    assert run.info.status == "FAILED"
