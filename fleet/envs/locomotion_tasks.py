"""Locomotion tasks for legged robots: ``velocity``, ``direction``, ``dynamics`` and ``robot_run`` (no env, no
pybullet).

Each task draws hidden params, validates them and scores a step of :class:`fleet.envs.locomotion.LocomotionEnv`
(which asks its task for the reward), so the env holds the physics and this module the tasks. Both the env and
the families (:mod:`fleet.envs.locomotion_families`, which add the env factory) import this module, never
each other the other way round.

Speeds are robot-agnostic in the params and scaled by the robot kind's :data:`GAITS` entry, because
``sample_params`` does not know the robot: ``{"speed": 0.5}`` asks the half-cheetah for 1 m/s (MAML's
0..2 m/s range) and the A1 quadruped for 0.25 m/s (its scripted trot reaches ~0.45 m/s).

Usage::

    task = LOCOMOTION_TASKS["velocity"]
    params = task.validate(task.sample_params(np.random.default_rng(0)))
    score = task.score(params, GAITS["planar"], velocity=1.2, recent=1.1, ctrl=0.3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LOCOMOTION_KINDS = ("planar", "quadruped")


@dataclass(frozen=True)
class Gait:
    """Reward scales of one robot kind.

    Attributes:
        top_speed: Forward speed (m/s) that ``speed=1`` asks for.
        ctrl_cost: Weight of ``sum(action**2)`` subtracted each step (MAML's cheetah: 0.5 * 0.1).
        alive_bonus: Added each step the robot has not fallen (only a robot that can fall needs one: without
            it, ending the episode early by falling would beat a negative tracking reward).
    """

    top_speed: float
    ctrl_cost: float
    alive_bonus: float


GAITS: dict[str, Gait] = {
    "planar": Gait(top_speed=2.0, ctrl_cost=0.05, alive_bonus=0.0),
    "quadruped": Gait(top_speed=0.5, ctrl_cost=0.02, alive_bonus=1.0),
}
# Success = the forward velocity, averaged over the last steps, within this fraction of top speed of the target.
SUCCESS_TOLERANCE = 0.15
# Direction success: moving the right way at this fraction of top speed (cheetah 1 m/s, A1 0.25 m/s); random
# flailing moves the cheetah at ~0.5 m/s either way.
DIRECTION_SUCCESS_SPEED = 0.5
# Dynamics tasks ask for a fixed speed (cheetah 1 m/s, A1 0.25 m/s): the hidden part is the body, not the goal.
DYNAMICS_SPEED = 0.5
PAYLOAD_RANGE = (0.0, 3.0)  # kg added to the base: up to ~20-25% of the cheetah's 14 kg and the A1's 12.5 kg
FRICTION_RANGE = (0.5, 1.5)  # ground lateral friction; pybullet multiplies it with the feet's
WEAK_STRENGTH_RANGE = (0.3, 1.0)
FAILED_MOTOR_PROBABILITY = 0.25  # this share of dynamics tasks has one motor at strength 0 (a failed motor)
MAX_WEAK_JOINT = 12  # the A1's actuated joints; the env uses weak_joint % its own count (cheetah: 6)


@dataclass(frozen=True)
class StepScore:
    """What a family makes of one step: the reward, success, and the target speed for ``info``."""

    reward: float
    success: bool
    target_velocity: float


def _check_keys(family: str, params: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(params, dict) or set(params) != set(names):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{family} task params must be a dict with exactly keys {list(names)}, got {got}")
    return params


def _number(family: str, key: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in ``[low, high]``; a ValueError naming the key and the range otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{family} task param {key!r} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{family} task param {key!r} must be in [{low}, {high}], got {value!r}")
    return float(value)


class _LocomotionTask:
    """Shared parts: supported kinds and the tracking reward."""

    name = ""
    param_names: tuple[str, ...] = ()
    robot_kinds = LOCOMOTION_KINDS

    def _tracking(self, gait: Gait, velocity: float, recent: float, target: float, ctrl: float) -> StepScore:
        """Reward for holding ``target`` m/s: ``-|v - v*| - ctrl_cost * sum(a^2) + alive``."""
        reward = -abs(velocity - target) - gait.ctrl_cost * ctrl + gait.alive_bonus
        return StepScore(reward, abs(recent - target) < SUCCESS_TOLERANCE * gait.top_speed, target)


class VelocityTask(_LocomotionTask):
    """Run forward at a hidden target speed (MAML's half-cheetah velocity task).

    Params ``{"speed": s}`` with ``s`` uniform in [0, 1]: the target is ``s * top_speed`` of the robot kind
    (cheetah 0..2 m/s, A1 0..0.5 m/s). Reward ``-|v - v*| - ctrl_cost * |a|^2`` (+ alive bonus for the quadruped).
    """

    name = "velocity"
    description = "run forward at a hidden target speed (cheetah 0-2 m/s, A1 0-0.5 m/s)"
    param_names = ("speed",)

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a target speed fraction uniformly from [0, 1]."""
        return {"speed": float(rng.uniform(0.0, 1.0))}

    def too_close(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Targets within 1% of top speed are the same task for held-out purposes."""
        return abs(a["speed"] - b["speed"]) < 0.01

    def validate(self, params: Any) -> dict[str, Any]:
        """Return canonical params; ValueError naming the bad key otherwise."""
        _check_keys(self.name, params, self.param_names)
        return {"speed": _number(self.name, "speed", params["speed"], 0.0, 1.0)}

    def score(self, params: dict[str, Any], gait: Gait, velocity: float, recent: float, ctrl: float) -> StepScore:
        """Score one step at forward ``velocity`` (``recent`` = its recent average) with ``ctrl = |a|^2``."""
        return self._tracking(gait, velocity, recent, params["speed"] * gait.top_speed, ctrl)


class DirectionTask(_LocomotionTask):
    """Run forward or backward, the direction hidden (MAML's cheetah forward/backward task).

    Params ``{"direction": 1 or -1, "variant": u}``. Only two directions exist, so train and test tasks cannot
    differ in direction: ``variant`` (uniform in [0, 1), no effect on the env) is a nuisance parameter that makes
    every task's params distinct, and :meth:`too_close` is always False. Held-out tasks are therefore new draws
    of the same two directions, as in MAML's evaluation. Reward ``direction * v - ctrl_cost * |a|^2``
    (+ alive bonus for the quadruped).
    """

    name = "direction"
    description = "run forward or backward, direction hidden (held-out tasks: new draws of the two directions)"
    param_names = ("direction", "variant")

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the direction (fair coin) and the nuisance variant."""
        return {"direction": 1 if rng.random() < 0.5 else -1, "variant": float(rng.random())}

    def too_close(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Always False: the two directions are shared by both splits by design (see the class docstring)."""
        return False

    def validate(self, params: Any) -> dict[str, Any]:
        """Return canonical params; ValueError naming the bad key otherwise."""
        _check_keys(self.name, params, self.param_names)
        direction = params["direction"]
        if isinstance(direction, bool) or direction not in (1, -1):
            raise ValueError(f"direction task param 'direction' must be 1 or -1, got {direction!r}")
        return {"direction": int(direction), "variant": _number(self.name, "variant", params["variant"], 0.0, 1.0)}

    def score(self, params: dict[str, Any], gait: Gait, velocity: float, recent: float, ctrl: float) -> StepScore:
        """Reward speed in the hidden direction."""
        direction = params["direction"]
        reward = direction * velocity - gait.ctrl_cost * ctrl + gait.alive_bonus
        success = direction * recent > DIRECTION_SUCCESS_SPEED * gait.top_speed
        return StepScore(reward, success, direction * gait.top_speed)


class DynamicsTask(_LocomotionTask):
    """Walk forward at a fixed speed on a hidden body: payload, ground friction, a weak or failed motor.

    Params ``{"payload": kg, "friction": mu, "weak_joint": i, "weak_strength": s}``: ``payload`` in
    :data:`PAYLOAD_RANGE` is added to the base mass; ``friction`` in :data:`FRICTION_RANGE` is the ground's
    lateral friction; motor ``weak_joint % num_joints`` (``i`` in ``0..11``, so one distribution serves the
    6-joint cheetah and the 12-joint A1) keeps ``s`` of its force, with ``s = 0`` (a failed, limp motor) in
    :data:`FAILED_MOTOR_PROBABILITY` of the tasks and ``s`` uniform in :data:`WEAK_STRENGTH_RANGE` otherwise.
    Reward as ``velocity`` with the target ``DYNAMICS_SPEED * top_speed``.
    """

    name = "dynamics"
    description = "walk forward on a hidden body: payload, ground friction, one weak or failed motor"
    param_names = ("payload", "friction", "weak_joint", "weak_strength")

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw payload, friction, the weakened motor and its strength."""
        payload = float(rng.uniform(*PAYLOAD_RANGE))
        friction = float(rng.uniform(*FRICTION_RANGE))
        weak_joint = int(rng.integers(0, MAX_WEAK_JOINT))
        failed = rng.random() < FAILED_MOTOR_PROBABILITY
        strength = 0.0 if failed else float(rng.uniform(*WEAK_STRENGTH_RANGE))
        return {"payload": payload, "friction": friction, "weak_joint": weak_joint, "weak_strength": strength}

    def too_close(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Same weak motor and payload, friction and strength all within a few percent of their ranges."""
        return (a["weak_joint"] == b["weak_joint"] and abs(a["payload"] - b["payload"]) < 0.1
                and abs(a["friction"] - b["friction"]) < 0.03 and abs(a["weak_strength"] - b["weak_strength"]) < 0.03)

    def validate(self, params: Any) -> dict[str, Any]:
        """Return canonical params; ValueError naming the bad key otherwise."""
        _check_keys(self.name, params, self.param_names)
        joint = params["weak_joint"]
        if isinstance(joint, bool) or not isinstance(joint, (int, np.integer)) or not 0 <= joint < MAX_WEAK_JOINT:
            raise ValueError(f"dynamics task param 'weak_joint' must be an int in [0, {MAX_WEAK_JOINT}), got {joint!r}")
        return {"payload": _number(self.name, "payload", params["payload"], 0.0, 20.0),
                "friction": _number(self.name, "friction", params["friction"], 0.05, 5.0),
                "weak_joint": int(joint),
                "weak_strength": _number(self.name, "weak_strength", params["weak_strength"], 0.0, 1.0)}

    def score(self, params: dict[str, Any], gait: Gait, velocity: float, recent: float, ctrl: float) -> StepScore:
        """Track the fixed forward speed."""
        return self._tracking(gait, velocity, recent, DYNAMICS_SPEED * gait.top_speed, ctrl)


class RobotRunTask(_LocomotionTask):
    """Run forward at the fixed ``DYNAMICS_SPEED`` (cheetah 1 m/s, A1 0.25 m/s); the only hidden thing is the robot.

    Params ``{"variant": u}``, ``u`` uniform in [0, 1), with no effect on the env: a nuisance id, as
    ``direction``'s, that gives the task machinery (splits, ids, meta-batches) distinct tasks. An observed target
    speed was the alternative; it was left out so that nothing but the robot's parameters (the fleet spec's
    ``joint_gains``, masses, ...) separates episodes: an exam of robot inference, with the same observation as
    the other locomotion families. Held-out tasks are new draws of the same task; held-out robots are the test.
    """

    name = "robot_run"
    description = "run forward at a fixed speed; only the robot (fleet spec: joint gains, masses) is hidden"
    param_names = ("variant",)

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the nuisance variant."""
        return {"variant": float(rng.random())}

    def too_close(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Always False: every task is the same run; only exactly equal variants are rejected."""
        return False

    def validate(self, params: Any) -> dict[str, Any]:
        """Return canonical params; ValueError naming the bad key otherwise."""
        _check_keys(self.name, params, self.param_names)
        return {"variant": _number(self.name, "variant", params["variant"], 0.0, 1.0)}

    def score(self, params: dict[str, Any], gait: Gait, velocity: float, recent: float, ctrl: float) -> StepScore:
        """Track the fixed forward speed."""
        return self._tracking(gait, velocity, recent, DYNAMICS_SPEED * gait.top_speed, ctrl)


LOCOMOTION_TASKS: dict[str, VelocityTask | DirectionTask | DynamicsTask | RobotRunTask] = {
    task.name: task for task in (VelocityTask(), DirectionTask(), DynamicsTask(), RobotRunTask())
}
