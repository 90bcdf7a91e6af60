"""The push task family: an arm pushes a block along the floor to a hidden goal.

This module holds the task ranges and the :class:`PushFamily` and imports no pybullet (like
:mod:`fleet.envs.reach_family`); the env lives in :mod:`fleet.envs.push`.

Task params (all hidden from the observation; the policy infers them from reward and from how the
block moves):

- ``goal``: ``[x, y]`` world frame, metres, uniform in ``GOAL_CENTER ± GOAL_HALF_EXTENTS``: a 14x24 cm
  box 8-22 cm ahead of the block's start (``BLOCK_START``), so a hand that starts behind the block can
  push it there without walking around it.
- ``block_mass``: kg, uniform in ``BLOCK_MASS_RANGE``.
- ``block_friction``: the block's lateral friction coefficient, uniform in ``BLOCK_FRICTION_RANGE``
  (the floor's is 1, and Bullet multiplies the two, so this is the block-floor coefficient).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import gymnasium

    from fleet.robots import RobotSpec

# World frame, metres (the arm's base is at the origin). Both arms reach the whole hand workspace at
# pushing height with the end effector pointing down (solved with pybullet IK, see fleet.envs.push).
BLOCK_START: tuple[float, float] = (0.5, 0.0)
# A 4 cm cube: low enough that only the KUKA's flange, not its wider wrist above it, touches the block.
BLOCK_HALF_SIZE = 0.02
GOAL_CENTER: tuple[float, float] = (0.65, 0.0)
GOAL_HALF_EXTENTS: tuple[float, float] = (0.07, 0.12)
BLOCK_MASS_RANGE: tuple[float, float] = (0.2, 1.0)
BLOCK_FRICTION_RANGE: tuple[float, float] = (0.3, 1.0)
# The hand starts here, at pushing height, 10 cm behind the block's centre: clear of it for both arms.
HAND_START: tuple[float, float] = (0.40, 0.0)
# The commanded hand target is clipped into this xy box: room to go around the block, away from the base.
HAND_LOW: tuple[float, float] = (0.32, -0.3)
HAND_HIGH: tuple[float, float] = (0.8, 0.3)
# Held-out tasks closer than this (goal distance plus relative mass/friction differences) are near-copies.
MIN_TASK_SEPARATION = 0.01
PARAM_NAMES = ("goal", "block_mass", "block_friction")


def _finite_floats(value: Any, count: int, what: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(x) for x in value) if count > 1 else (float(value),)
    except (TypeError, ValueError):
        raise ValueError(f"push {what} must be {count} number(s), got {value!r}") from None
    if len(numbers) != count or not all(math.isfinite(x) for x in numbers):
        raise ValueError(f"push {what} must be {count} finite number(s), got {value!r}")
    return numbers


def validate_push_params(params: dict[str, Any]) -> tuple[tuple[float, float], float, float]:
    """Return ``(goal, block_mass, block_friction)`` from push params; ``ValueError`` on anything else."""
    if not isinstance(params, dict) or set(params) != set(PARAM_NAMES):
        got = sorted(params) if isinstance(params, dict) else repr(params)
        raise ValueError(f"push task params must be a dict with exactly keys {list(PARAM_NAMES)}, got {got}")
    goal = _finite_floats(params["goal"], 2, "goal ([x, y])")
    (mass,) = _finite_floats(params["block_mass"], 1, "block_mass")
    (friction,) = _finite_floats(params["block_friction"], 1, "block_friction")
    if mass <= 0 or friction < 0:
        raise ValueError(f"push block_mass must be > 0 and block_friction >= 0, got {mass!r}, {friction!r}")
    return (goal[0], goal[1]), mass, friction


class PushFamily:
    """Push a block to a hidden goal on the floor; block mass and friction vary per task too.

    Params are ``{"goal": [x, y], "block_mass": kg, "block_friction": mu}`` with plain floats, drawn
    from the ranges in this module's docstring. Arms only (``robot_kinds``).

    Usage::

        family = PushFamily()
        env = family.make_env(RobotSpec(), horizon=60)
        env.set_task(family.sample_params(np.random.default_rng(0)))
    """

    name = "push"
    description = "push a 4 cm block to a hidden goal 8-25 cm away; block mass and friction vary (dense reward)"
    param_names = PARAM_NAMES
    robot_kinds = ("arm",)

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

    def make_env(
        self, robot: RobotSpec, horizon: int, render_mode: str | None = None
    ) -> gymnasium.Env:
        """Build a :class:`fleet.envs.push.PushEnv` for ``robot`` (an arm); call ``set_task`` before use."""
        from fleet.envs.kinds import check_robot_kind
        from fleet.envs.push import PushEnv  # deferred: pybullet only where envs are stepped

        check_robot_kind(self, robot)
        return PushEnv(robot=robot, horizon=horizon, render_mode=render_mode)

