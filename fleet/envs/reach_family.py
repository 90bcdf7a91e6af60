"""The reach task family: move the end effector to a hidden goal.

The family owns its env factory: :meth:`ReachFamily.make_env` imports :mod:`fleet.envs.reach` only when an
env is made, so building task distributions (on the learner, in the CLI) loads no pybullet. The goal region
and param checks live in :mod:`fleet.envs.reach_task`, which env and family both import.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fleet.envs.kinds import check_robot_kind
from fleet.envs.reach_task import GOAL_CENTER, GOAL_HALF_EXTENTS, MIN_GOAL_SEPARATION

if TYPE_CHECKING:
    import gymnasium

    from fleet.robots import RobotSpec


class ReachFamily:
    """Reach a hidden goal position with the end effector (goal-hidden meta-RL).

    Goals are uniform in the box ``GOAL_CENTER ± GOAL_HALF_EXTENTS``; params are
    ``{"goal": [x, y, z]}`` with plain floats. The goal is not observed: the policy infers it from reward.

    Usage::

        family = ReachFamily()
        env = family.make_env(RobotSpec(), horizon=50)
        env.set_task(family.sample_params(np.random.default_rng(0)))
    """

    name = "reach"
    description = "move the end effector to a hidden goal in a 34x40x20 cm box (dense reward)"
    param_names = ("goal",)
    robot_kinds = ("arm",)
    action_mode = "ee"  # the env's action_mode: end-effector deltas through IK

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one goal uniformly from the goal region."""
        offset = rng.uniform(-1.0, 1.0, size=3) * np.asarray(GOAL_HALF_EXTENTS)
        return {"goal": [float(c + o) for c, o in zip(GOAL_CENTER, offset.tolist(), strict=True)]}

    def too_close(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """True when two tasks' goals are within ``MIN_GOAL_SEPARATION`` (used to keep splits apart)."""
        return math.dist(a["goal"], b["goal"]) < MIN_GOAL_SEPARATION

    def make_env(self, robot: RobotSpec, horizon: int, render_mode: str | None = None) -> gymnasium.Env:
        """Build a :class:`fleet.envs.reach.ReachEnv` for ``robot`` (an arm); call ``set_task`` before use."""
        check_robot_kind(self, robot)
        from fleet.envs.reach import ReachEnv  # deferred: pybullet only where envs are stepped

        return ReachEnv(robot=robot, horizon=horizon, render_mode=render_mode, action_mode=self.action_mode)


class ReachJointFamily(ReachFamily):
    """The reach family driven by joint position deltas (``action_mode="joint"``): same goals, params, reward,
    success (5 cm) and observation; the action is one delta per controlled joint, with no IK per step."""

    name = "reach_joint"
    description = "reach, with joint position deltas as actions (no IK per step)"
    action_mode = "joint"


class RobotReachFamily(ReachJointFamily):
    """Reach an *observed* goal with joint deltas: the only hidden thing is the robot (its ``joint_gains``).

    Goals, params, train/test split, reward and success (5 cm) as ``reach``; the observation is the reach
    observation plus ``goal - ee_pos`` (:class:`fleet.envs.robot_reach.RobotReachEnv`: 23 values on a 7-joint arm).
    """

    name = "robot_reach"
    description = "reach an observed goal with joint deltas; only the robot (fleet spec: joint gains) is hidden"

    def make_env(self, robot: RobotSpec, horizon: int, render_mode: str | None = None) -> gymnasium.Env:
        """Build a :class:`fleet.envs.robot_reach.RobotReachEnv` for ``robot`` (an arm); then ``set_task``."""
        check_robot_kind(self, robot)
        from fleet.envs.robot_reach import RobotReachEnv  # deferred: pybullet only where envs are stepped

        return RobotReachEnv(robot=robot, horizon=horizon, render_mode=render_mode)
