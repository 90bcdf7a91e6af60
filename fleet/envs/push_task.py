"""The push task: an arm pushes a block along the floor to a hidden goal; ranges and param checks.

No env, no pybullet: both the env (:mod:`fleet.envs.push`) and the family (:mod:`fleet.envs.push_family`)
import this module.

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
from typing import Any

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
