"""The reach task: the goal region, the workspace box and param validation (no env, no pybullet).

Both the env (:mod:`fleet.envs.reach`) and the family (:mod:`fleet.envs.reach_family`) import this module.
"""

from __future__ import annotations

import math
from typing import Any

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
