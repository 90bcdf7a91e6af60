"""The built-in task families, by name. Add a family here (one line) to make it a built-in;
external families need no edit here: name them in a config as ``module:object``."""

from __future__ import annotations

from fleet.envs.locomotion_families import DirectionFamily, DynamicsFamily, RobotRunFamily, VelocityFamily
from fleet.envs.push_family import PushFamily, PushJointFamily
from fleet.envs.reach_family import ReachFamily, ReachJointFamily, RobotReachFamily

BUILTIN_FAMILIES = {
    "reach": ReachFamily(),
    "push": PushFamily(),
    "reach_joint": ReachJointFamily(),
    "push_joint": PushJointFamily(),
    "velocity": VelocityFamily(),
    "direction": DirectionFamily(),
    "dynamics": DynamicsFamily(),
    "robot_reach": RobotReachFamily(),  # robot-adaptation exams: only the robot is hidden
    "robot_run": RobotRunFamily(),
}
