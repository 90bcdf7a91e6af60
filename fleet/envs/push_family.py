"""The push task family: an arm pushes a block along the floor to a hidden goal.

The family owns its env factory (:meth:`PushFamily.make_env` imports :mod:`fleet.envs.push` only when an env
is made); the task ranges and param checks live in :mod:`fleet.envs.push_task` (see its docstring for the
params), which env and family both import.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fleet.envs.kinds import check_robot_kind
from fleet.envs.push_task import (
    BLOCK_FRICTION_RANGE,
    BLOCK_MASS_RANGE,
    GOAL_CENTER,
    GOAL_HALF_EXTENTS,
    MIN_TASK_SEPARATION,
    PARAM_NAMES,
)

if TYPE_CHECKING:
    import gymnasium

    from fleet.robots import RobotSpec


class PushFamily:
    """Push a block to a hidden goal on the floor; block mass and friction vary per task too.

    Params are ``{"goal": [x, y], "block_mass": kg, "block_friction": mu}`` with plain floats, drawn
    from the ranges in :mod:`fleet.envs.push_task`. Arms only (``robot_kinds``).

    Usage::

        env = PushFamily().make_env(RobotSpec(model="panda", robot_id="panda-0"), horizon=60)
        env.reset(seed=0, options={"task": PushFamily().sample_params(np.random.default_rng(0))})
    """

    name = "push"
    description = "push a 4 cm block to a hidden goal 8-25 cm away; block mass and friction vary (dense reward)"
    param_names = PARAM_NAMES
    robot_kinds = ("arm",)
    action_mode = "ee"  # the env's action_mode: hand deltas in x and y through IK

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one task: goal uniform in the goal box, mass and friction uniform in their ranges."""
        offset = rng.uniform(-1.0, 1.0, size=2) * np.asarray(GOAL_HALF_EXTENTS)
        goal = [float(c + o) for c, o in zip(GOAL_CENTER, offset.tolist(), strict=True)]
        mass = float(rng.uniform(*BLOCK_MASS_RANGE))
        friction = float(rng.uniform(*BLOCK_FRICTION_RANGE))
        return {"goal": goal, "block_mass": mass, "block_friction": friction}

    def too_close(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """True when two tasks are near-copies: goal distance plus relative mass/friction gaps is tiny."""
        gap = (math.dist(a["goal"], b["goal"])
               + abs(a["block_mass"] - b["block_mass"]) / BLOCK_MASS_RANGE[1]
               + abs(a["block_friction"] - b["block_friction"]) / BLOCK_FRICTION_RANGE[1])
        return gap < MIN_TASK_SEPARATION

    def make_env(self, robot: RobotSpec, horizon: int, render_mode: str | None = None) -> gymnasium.Env:
        """Build a :class:`fleet.envs.push.PushEnv` for ``robot`` (an arm); call ``set_task`` before use."""
        check_robot_kind(self, robot)
        from fleet.envs.push import PushEnv  # deferred: pybullet only where envs are stepped

        return PushEnv(robot=robot, horizon=horizon, render_mode=render_mode, action_mode=self.action_mode)


class PushJointFamily(PushFamily):
    """The push family driven by joint position deltas (``action_mode="joint"``): same tasks, reward, success
    and observation; the action is one delta per controlled joint, with no IK per step."""

    name = "push_joint"
    description = "push, with joint position deltas as actions (no IK per step)"
    action_mode = "joint"

