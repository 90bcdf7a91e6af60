"""The reach task family: move the end effector to a hidden goal.

This module holds the goal region and the :class:`ReachFamily` and imports no pybullet, so building
task distributions (on the learner, in the CLI) costs nothing; the env itself lives in
:mod:`fleet.envs.reach` and is imported only when an env is made.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import gymnasium

    from fleet.robots import RobotSpec

# World frame, metres. The centre is the KUKA flange position at its home pose, so a fresh episode
# starts in the middle of the goal region. x is narrower than y because the pointing-down arm cannot
# bring its flange closer than ~0.4 m to its base (elbow limit) nor much beyond ~0.76 m: with these
# extents a scripted controller reaches every point of a 5x5x5 grid in the box to within 7 mm.
GOAL_CENTER: tuple[float, float, float] = (0.58, 0.0, 0.40)
GOAL_HALF_EXTENTS: tuple[float, float, float] = (0.17, 0.2, 0.1)
# The commanded end-effector target is clipped into this slightly larger box: room to overshoot and
# come back, while keeping the arm away from the floor, its own base and the edge of its reach.
WORKSPACE_MARGIN: tuple[float, float, float] = (0.05, 0.05, 0.05)
_REACH = tuple(h + m for h, m in zip(GOAL_HALF_EXTENTS, WORKSPACE_MARGIN, strict=True))
WORKSPACE_LOW: tuple[float, ...] = tuple(c - r for c, r in zip(GOAL_CENTER, _REACH, strict=True))
WORKSPACE_HIGH: tuple[float, ...] = tuple(c + r for c, r in zip(GOAL_CENTER, _REACH, strict=True))
# A test goal closer than this to any train goal would make "held-out" a near-copy of a train task.
MIN_GOAL_SEPARATION = 0.01


def validate_goal(params: dict[str, Any]) -> tuple[float, float, float]:
    """Return ``params["goal"]`` as three finite floats; raise ``ValueError`` on anything else."""
    if not isinstance(params, dict) or "goal" not in params:
        raise ValueError(f"reach task params must be a dict with key 'goal', got {params!r}")
    unknown = sorted(set(params) - {"goal"})
    if unknown:
        raise ValueError(f"unknown reach task param(s) {unknown}; valid: ['goal']")
    try:
        goal = tuple(float(x) for x in params["goal"])
    except (TypeError, ValueError):
        raise ValueError(f"reach goal must be 3 numbers, got {params['goal']!r}") from None
    if len(goal) != 3 or not all(math.isfinite(x) for x in goal):
        raise ValueError(f"reach goal must be 3 finite numbers, got {params['goal']!r}")
    return goal  # type: ignore[return-value]


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

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one goal uniformly from the goal region."""
        offset = rng.uniform(-1.0, 1.0, size=3) * np.asarray(GOAL_HALF_EXTENTS)
        return {"goal": [float(c + o) for c, o in zip(GOAL_CENTER, offset.tolist(), strict=True)]}

    def too_close(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """True when two tasks' goals are within ``MIN_GOAL_SEPARATION`` (used to keep splits apart)."""
        return math.dist(a["goal"], b["goal"]) < MIN_GOAL_SEPARATION

    def make_env(
        self, robot: RobotSpec, horizon: int, render_mode: str | None = None
    ) -> gymnasium.Env:
        """Build a :class:`fleet.envs.reach.ReachEnv` for ``robot`` (an arm); call ``set_task`` before use."""
        from fleet.envs.kinds import check_robot_kind
        from fleet.envs.reach import ReachEnv  # deferred: pybullet only where envs are stepped

        check_robot_kind(self, robot)
        return ReachEnv(robot=robot, horizon=horizon, render_mode=render_mode)
