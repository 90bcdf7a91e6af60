"""Checks every env family shares: which robots a family accepts (a family's ``robot_kinds`` against the
robot model's ``kind``), and the ``reset(options=...)`` an env accepts."""

from __future__ import annotations

from typing import Any

from fleet.robots import RobotSpec, get_robot_model


def check_robot_kind(family: Any, robot: RobotSpec) -> None:
    """Raise ``ValueError`` unless ``robot``'s model kind is one of ``family.robot_kinds``.

    Usage (first line of a family's ``make_env``)::

        check_robot_kind(self, robot)
    """
    model = get_robot_model(robot.model)
    if model.kind not in family.robot_kinds:
        raise ValueError(f"task family {family.name!r} supports robot kinds {family.robot_kinds}, but robot "
                         f"{robot.robot_id!r} (model {model.name!r}) is of kind {model.kind!r}")


def apply_reset_options(env: Any, options: dict[str, Any] | None) -> None:
    """Validate ``reset`` options (only ``"task"`` is known) and set the task when one is given."""
    options = options or {}
    unknown = sorted(set(options) - {"task"})
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; valid: ['task']")
    if "task" in options:
        env.set_task(options["task"])
