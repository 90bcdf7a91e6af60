"""A complete external task family: goal-hidden 2-D navigation (MAML's point-robot task), as a plugin.

Nothing here imports metafleet: this file is what a user writes for their own gymnasium env. Train it
from the repository root with ``fleet train examples/nav2d.yaml``, which names the family as
``family: examples.nav2d:Nav2D``.

The protocol (see README, "Bring your own task family"):

- ``name``: a short name;
- ``sample_params(rng) -> dict``: one task's parameters, plain JSON-able python, drawn with ``rng`` only;
- ``make_env(horizon) -> gymnasium.Env``: an env with ``Box`` spaces whose ``reset(options={"task": params})``
  applies the task (an env may instead define ``set_task(params)``);
- optional: ``description``, ``param_names``, ``robot_kinds``, ``too_close(a, b)``.
"""

from __future__ import annotations

import math

import gymnasium
import numpy as np

GOAL_HALF_WIDTH = 0.5  # goals are uniform in [-0.5, 0.5]^2
MAX_STEP = 0.1  # distance moved per step by an action of 1 (per axis)
SUCCESS_RADIUS = 0.1


class Nav2DEnv(gymnasium.Env):
    """A point starts near the origin and must reach a goal it cannot see; reward is -distance.

    Observation: the position ``(x, y)``. Action: a velocity in ``[-1, 1]^2`` (x ``MAX_STEP``).
    The goal comes with ``reset(options={"task": {"goal": [x, y]}})``.
    """

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 100) -> None:
        self.horizon = horizon
        self.observation_space = gymnasium.spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.goal = np.zeros(2)
        self.pos = np.zeros(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.goal = np.asarray(options["task"]["goal"], dtype=np.float64)
        self.pos = self.np_random.uniform(-0.01, 0.01, 2)
        self.t = 0
        return self.pos.astype(np.float32), {}

    def step(self, action):
        self.pos = np.clip(self.pos + MAX_STEP * np.clip(action, -1.0, 1.0), -2.0, 2.0)
        self.t += 1
        distance = float(np.linalg.norm(self.pos - self.goal))
        info = {"success": distance < SUCCESS_RADIUS, "distance": distance}
        return self.pos.astype(np.float32), -distance, False, self.t >= self.horizon, info


class Nav2D:
    """Reach a hidden goal in the plane (2-D point robot, dense reward)."""

    name = "nav2d"
    description = "2-D point robot reaches a hidden goal in [-0.5, 0.5]^2 (reward -distance)"
    param_names = ("goal",)

    def sample_params(self, rng: np.random.Generator) -> dict:
        return {"goal": rng.uniform(-GOAL_HALF_WIDTH, GOAL_HALF_WIDTH, 2).tolist()}

    def too_close(self, a: dict, b: dict) -> bool:
        return math.dist(a["goal"], b["goal"]) < 0.01

    def make_env(self, horizon: int) -> gymnasium.Env:
        return Nav2DEnv(horizon)
