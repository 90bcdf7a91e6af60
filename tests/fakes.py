"""Shared fakes: a tiny, fast goal-hidden 2D point env (MAML's navigation task) and helpers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from fleet.robots import RobotSpec
from fleet.tasks import Task
from policy import PolicySpec


class PointEnv(gym.Env):
    """A point at the origin must move to a hidden goal in [-0.5, 0.5]^2. obs = position."""

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 20):
        self.horizon = horizon
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.goal = np.zeros(2, np.float32)
        self.pos = np.zeros(2, np.float32)
        self.t = 0

    def set_task(self, params: dict) -> None:
        self.goal = np.asarray(params["goal"], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self.pos = self.np_random.uniform(-0.01, 0.01, 2).astype(np.float32)
        self.t = 0
        return self.pos.copy(), {}

    def step(self, action):
        action = np.nan_to_num(np.clip(np.asarray(action, np.float32), -1, 1))
        self.pos = np.clip(self.pos + 0.1 * action, -2, 2).astype(np.float32)
        self.t += 1
        dist = float(np.linalg.norm(self.pos - self.goal))
        return self.pos.copy(), -dist, False, self.t >= self.horizon, {"success": dist < 0.1, "distance": dist}


def point_env_factory(family: str, robot: RobotSpec, horizon: int) -> gym.Env:
    return PointEnv(horizon)


POINT_SPEC = PolicySpec(obs_dim=2, act_dim=2, hidden_sizes=(32, 32))
ROBOT = RobotSpec()


def point_tasks(n: int, seed: int = 0, split: str = "train") -> list[Task]:
    rng = np.random.default_rng(seed)
    return [Task("point", f"point/{split}/{i}", {"goal": rng.uniform(-0.5, 0.5, 2).tolist()}) for i in range(n)]


def make_policy_dir(directory, obs_dim: int = 20, head_scale: float = 1.0, horizon: int = 20):
    """A small random reach policy saved as an artifact (numpy weights; what the learner would publish)."""
    from pathlib import Path

    from policy import PolicyWeights
    from policy.artifact import PolicyArtifact

    spec = PolicySpec(obs_dim, 3, (16,))
    rng = np.random.default_rng(0)
    arrays = {"obs_mean": np.zeros(obs_dim), "obs_std": np.ones(obs_dim),
              "hidden.0.weight": rng.normal(0, 0.3, (16, obs_dim)), "hidden.0.bias": np.zeros(16),
              "mean_head.weight": rng.normal(0, head_scale, (3, 16)), "mean_head.bias": np.zeros(3),
              "log_std": np.full(3, -0.5)}
    weights = PolicyWeights(spec, {k: v.astype(np.float32) for k, v in arrays.items()}, "t")
    spaces = {"observation": {"shape": [obs_dim], "low": [-10.0] * obs_dim, "high": [10.0] * obs_dim,
                              "dtype": "float32"},
              "action": {"shape": [3], "low": [-1.0] * 3, "high": [1.0] * 3, "dtype": "float32"}}
    PolicyArtifact.build(weights, spaces=spaces, fleet={"horizon": horizon, "family": "reach"}, family="reach",
                         robot=RobotSpec().to_dict()).save(directory)
    return Path(directory)


def load_benchmark(name: str):
    """Import `benchmarks/<name>.py` (a script, not a package) as a module named `<name>_benchmark`."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def point_protocol(tasks, episodes: int, horizon: int, seed: int = 0, steps=(0,), deterministic: bool = False):
    """An EvalProtocol on the fake point env: every task on ROBOT."""
    from learner.evaluation import EvalProtocol

    return EvalProtocol(tuple(tasks), (ROBOT,) * len(tasks), tuple(steps), episodes, horizon, seed,
                        deterministic=deterministic)


def drive_iteration(learner, pool, tasks, iteration: int, episodes: int, horizon: int, seed: int = 0):
    """One meta-iteration as the trainer drives it (collect plan -> pool -> update) on ROBOT; returns
    (update metrics, [(Collect, batches)] of the iteration)."""
    from learner.sampling import drive, requests_for
    from learner.seeds import request_seed

    def requests(collect):
        return requests_for(collect, [ROBOT] * len(collect.tasks), horizon,
                            lambda i: request_seed(seed, collect.stream, iteration, i))

    phases = drive(learner.collect(tasks, iteration, episodes), pool, requests)
    return learner.update(), phases


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on (all held open until all are chosen)."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
