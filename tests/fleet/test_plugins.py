"""External task families named module:object: the protocol, config-time checks, Ray workers, training."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import fleet
from fleet.plugins import PluginError, load_plugin
from fleet.tasks import TaskDistribution, get_family
from learner.config import ConfigError, load_config
from learner.networks import GaussianMLPPolicy
from policy import PolicySpec
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

NAV = "examples.nav2d:Nav2D"

PLUGIN_SOURCE = '''
import gymnasium, numpy as np

class CounterEnv(gymnasium.Env):
    """Obs (2, 2) box; a task via set_task; counts steps."""
    def __init__(self, horizon):
        self.observation_space = gymnasium.spaces.Box(-5, 5, (2, 2), np.float64)
        self.action_space = gymnasium.spaces.Box(-0.5, 0.5, (1,), np.float64)
        self.horizon, self.scale, self.t, self.last_action = horizon, 0.0, 0, None
    def set_task(self, params):
        self.scale = params["scale"]
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        assert not options, "set_task envs get no task option"
        self.t = 0
        return np.zeros((2, 2)), {}
    def step(self, action):
        self.t += 1
        self.last_action = np.array(action)
        return np.full((2, 2), self.scale), np.float64(self.scale), False, self.t >= self.horizon, {}

class Counter:
    """Scale the observation by a hidden factor."""
    name = "counter"
    def sample_params(self, rng):
        return {"scale": float(rng.uniform(0, 1))}
    def make_env(self, robot, horizon):
        self.robot_seen = robot
        return CounterEnv(horizon)

counter = Counter()

class NoEnv:
    name = "noenv"
    def sample_params(self, rng):
        return {}

class DiscreteFamily:
    name = "discrete"
    def sample_params(self, rng):
        return {"x": 1.0}
    def make_env(self, horizon):
        env = CounterEnv(horizon)
        env.action_space = gymnasium.spaces.Discrete(3)
        return env

class NumpyParams(Counter):
    def sample_params(self, rng):
        return {"scale": np.float32(1.0), "v": np.zeros(2)}

class ThreeD:
    name = "three"
    def sample_params(self, rng):
        return {"goal": rng.uniform(-1, 1, 2).tolist()}
    def make_env(self, horizon):
        env = CounterEnv(horizon)
        env.observation_space = gymnasium.spaces.Box(-5, 5, (3,))
        return env
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_mod.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_plugin_mod"


def test_nav2d_example_is_a_family_with_guarded_envs():
    family = get_family(NAV)
    assert family.name == NAV and family.display_name == "nav2d" and family.param_names == ("goal",)
    dist = TaskDistribution(NAV, 10, 4, seed=0)
    assert [t.task_id for t in dist.tasks("test")] == [f"{NAV}/test/{i}" for i in range(4)]
    env = fleet.make_env(NAV, fleet.RobotSpec(), horizon=5)
    task = dist.tasks("train")[0]
    env.reset(seed=0, options={"task": task.params})
    np.testing.assert_allclose(env.unwrapped.goal, task.params["goal"])  # the task reached the env
    obs, reward, *_ = env.step(np.array([1.0, 0.0], np.float32))
    assert obs.dtype == np.float32 and reward == pytest.approx(-np.linalg.norm(env.unwrapped.pos - task.params["goal"]))
    assert env.step(np.array([np.nan, 0.0]))[4]["guard"] == "nonfinite_action"


def test_set_task_env_robot_aware_factory_and_flattened_spaces(plugin_module):
    ref = f"{plugin_module}:counter"
    robot = fleet.RobotSpec(robot_id="r-7")
    env = fleet.make_env(ref, robot, horizon=3)
    assert get_family(ref).plugin.robot_seen == robot
    assert env.observation_space.shape == (4,) and env.observation_space.dtype == np.float32
    obs, _ = env.reset(seed=0, options={"task": {"scale": 0.25}})  # routed to set_task
    assert obs.shape == (4,)
    obs, reward, *_ = env.step(np.array([3.0]))
    np.testing.assert_array_equal(obs, [0.25] * 4)
    assert reward == 0.25 and env.unwrapped.last_action.tolist() == [0.5]  # clipped into the action box
    assert get_family(ref).description == "Scale the observation by a hidden factor."  # docstring
    assert get_family(ref).robot_kinds is None and get_family(ref).param_names == ("scale",)


@pytest.mark.parametrize(("obj", "fragment"), [
    ("no_such_module_xyz:Fam", "cannot import module 'no_such_module_xyz'"),
    ("{mod}:Missing", "has no attribute 'Missing'"),
    ("{mod}:NoEnv", "missing required attribute(s) ['make_env']"),
    ("{mod}:DiscreteFamily", "action space must be a gymnasium.spaces.Box, got Discrete"),
    ("{mod}:NumpyParams", "JSON-able"),
    ("{mod}:", "expected 'module:object'"),
])
def test_bad_plugins_fail_at_config_time(plugin_module, obj, fragment):
    ref = obj.format(mod=plugin_module)
    with pytest.raises(ConfigError) as err:
        load_config(data={"fleet": {"family": ref}})
    assert "fleet.family" in str(err.value) or "fleet:" in str(err.value)
    assert fragment in str(err.value)


def test_plugin_error_type(plugin_module):
    with pytest.raises(PluginError, match="missing required"):
        load_plugin(f"{plugin_module}:NoEnv")


def test_mixture_with_different_spaces_is_refused(plugin_module):
    pattern = r"must share spaces: the observation space of family .*ThreeD.*but family .*Nav2D"
    with pytest.raises(ConfigError, match=pattern):
        load_config(data={"fleet": {"family": {NAV: 1, f"{plugin_module}:ThreeD": 1}}})


@pytest.mark.slow
def test_train_a_plugin_family_end_to_end(mlflow_uri):
    from learner.trainer import train

    cfg = load_config(data={
        "name": "nav-smoke", "fleet": {"family": NAV, "num_train_tasks": 6, "num_test_tasks": 2, "horizon": 10},
        "workers": {"backend": "local"}, "learner": {"hidden_sizes": [8], "ppo_epochs": 1},
        "train": {"iterations": 2, "meta_batch_size": 2, "episodes_per_task": 2, "eval_every": 0, "eval_tasks": 2,
                  "eval_episodes": 2, "eval_steps": [0, 1]},
        "tracking": {"registered_model": "nav-smoke"}})
    result = train(cfg)
    result.tracker.close()
    assert result.iterations == 2 and result.env_steps == 2 * 2 * 2 * 2 * 10
    assert result.spaces["observation"]["shape"] == [2]


def _readme_blocks() -> tuple[str, str]:
    """The plugin module and config exactly as README's "Bring your own task family" shows them."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Bring your own task family", 1)[1].split("\n## ", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    config = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    return python, config


def test_readme_plugin_recipe_works_as_written(tmp_path, monkeypatch):
    python, config = _readme_blocks()
    (tmp_path / "my_tasks.py").write_text(python)
    (tmp_path / "my_tasks.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)  # "run from the directory that holds my_tasks.py"
    cfg = load_config("my_tasks.yaml")
    assert cfg.fleet.family == "my_tasks:Gravity"
    dist = TaskDistribution(cfg.fleet.family, cfg.fleet.num_train_tasks, cfg.fleet.num_test_tasks, 0)
    torch.manual_seed(0)
    weights = GaussianMLPPolicy(PolicySpec(3, 1, (8,))).to_weights("w")
    tasks = dist.sample(2)
    batches = LocalWorkerPool(1).sample([SampleRequest(t, fleet.RobotSpec(), "w", 2, 20, i)
                                         for i, t in enumerate(tasks)], {"w": weights})
    assert all(b.num_steps == 40 for b in batches)
    env = fleet.make_env(cfg.fleet.family, fleet.RobotSpec(), 20)
    env.reset(seed=0, options={"task": tasks[0].params})
    assert env.unwrapped.g == tasks[0].params["g"]  # the task reached the pendulum
