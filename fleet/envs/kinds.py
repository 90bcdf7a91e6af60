"""Which robots a task family accepts: a family's ``robot_kinds`` against the robot model's ``kind``."""

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
