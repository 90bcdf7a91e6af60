"""PushEnv: an arm of the fleet pushes a block along the floor to a hidden goal (pybullet, one DIRECT client).

Works on every ``RobotModel`` of kind ``"arm"``. The hand (end-effector link, pointing down) is held at
a pushing height computed per robot from its collision geometry, so its lowest part moves just above
the floor and hits the 4 cm block low on its side; it starts 10 cm behind the block. Task params (goal, block mass,
block friction; ranges in :mod:`fleet.envs.push_task`) are hidden from the observation.

Observation (float32, every entry clipped into finite bounds), n controlled joints (7 for both arms):

- ``[0:3]`` ee_pos, ``[3:6]`` ee_vel (clipped to ±10), ``[6:6+n]`` joint_pos, ``[6+n:6+2n]`` joint_vel
  (clipped to ±10) — as in :mod:`fleet.envs.reach`
- ``[6+2n:9+2n]``  block_pos: block centre, m
- ``[9+2n:12+2n]`` block_vel: block linear velocity, m/s, clipped to ±10

Action: ``Box(-1, 1, (2,))``, a hand displacement in x and y of up to ``max_delta`` metres per axis; the
target is clipped into the hand box of the family and kept at pushing height. With ``action_mode="joint"``
(the ``push_joint`` family): ``Box(-1, 1, (n,))`` joint position deltas of up to ``max_joint_delta`` rad from the
same start pose (hand at pushing height); neither hand box nor height is enforced, the joint limits bound the
targets. Observation, reward and success are unchanged.

Reward: ``-|block - goal| - hand_weight * |hand - block|_xy + success_bonus * (|block - goal| < success_radius)``
(xy distances; the hand term guides the hand to the block). Episodes never terminate; they truncate
after ``horizon`` steps. ``info["distance"]`` is the block-goal distance, ``info["success"]`` whether it
is under ``success_radius``.

Usage::

    env = PushEnv(RobotSpec(model="panda", robot_id="panda-0"), horizon=60)
    obs, info = env.reset(seed=0, options={"task": {"goal": [0.65, 0.05], "block_mass": 0.5,
                                                    "block_friction": 0.6}})
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from fleet.envs.arm import ARM_GUARD_LIMITS, EE_POS_HIGH, EE_POS_LOW, MAX_EE_SPEED, MAX_JOINT_SPEED, ArmEnv, clamp
from fleet.envs.push_task import (
    BLOCK_FRICTION_RANGE,
    BLOCK_HALF_SIZE,
    BLOCK_MASS_RANGE,
    BLOCK_START,
    GOAL_CENTER,
    HAND_HIGH,
    HAND_LOW,
    HAND_START,
    validate_push_params,
)
from fleet.envs.quiet import quiet_stdout
from fleet.robots import RobotSpec

with quiet_stdout():
    import pybullet

# Gap between the hand's lowest collision point (its AABB at home) and the floor while pushing. Both
# hands taper at the bottom (the KUKA's flange edge is rounded, the panda's fingertips are wedges): higher
# up, the block meets the taper, is pressed down and slips under the hand. Measured with a scripted
# pusher on 16 tasks per arm: 1 cm clearance 9-10/16 successes, 3 mm 13-15/16.
PUSH_CLEARANCE = 0.003
MAX_BLOCK_SPEED = 10.0
DEFAULT_TASK = {"goal": list(GOAL_CENTER), "block_mass": sum(BLOCK_MASS_RANGE) / 2,
                "block_friction": sum(BLOCK_FRICTION_RANGE) / 2}


class PushEnv(ArmEnv):
    """Goal-hidden block pushing for one arm of the fleet; see the module docstring for the spaces.

    Args:
        robot, horizon, render_mode: As :class:`~fleet.envs.arm.ArmEnv` (``horizon`` defaults to 60).
        hand_weight: Weight of the hand-block distance penalty.
        arm_options: :class:`~fleet.envs.arm.ArmEnv`'s keyword arguments (``max_delta`` moves the hand,
            ``success_radius`` is the block-goal distance of a success, ``joint_noise`` is around the start pose).
    """

    guard_limits = {**ARM_GUARD_LIMITS, "block_speed": (0.0, 10.0), "block_position": (0.0, 3.0)}
    camera_target = (0.55, 0.0, 0.0)
    camera = {"distance": 1.0, "yaw": 60.0, "pitch": -40.0}

    def __init__(self, robot: RobotSpec | dict[str, Any] | None = None, horizon: int = 60,
                 render_mode: str | None = None, *, hand_weight: float = 0.5, **arm_options: Any) -> None:
        if not hand_weight >= 0:
            raise ValueError(f"hand_weight must be >= 0, got {hand_weight!r}")
        self.hand_weight = float(hand_weight)
        super().__init__(robot, horizon, render_mode, **arm_options)

    def _build(self) -> None:
        self.push_height = self._hand_offset() + PUSH_CLEARANCE
        self._home = self._solve_pose((*HAND_START, self.push_height))
        self._block = self._make_block()
        self._marker = self._make_goal_marker() if self.render_mode == "rgb_array" else None
        self._define_spaces()
        self._snapshot()
        self._get_block = self._bullet.getBasePositionAndOrientation
        self._get_block_vel = self._bullet.getBaseVelocity
        self._task = validate_push_params(DEFAULT_TASK)
        self._hand_xy: tuple[float, float] = HAND_START
        self.set_task(DEFAULT_TASK)  # a usable default; workers call set_task per task
        self._observe()

    # ----------------------------------------------------------------------------------- setup
    def _hand_offset(self) -> float:
        """Height of the end-effector frame above the lowest collision point of the hand, at home."""
        ee_z = self._link_state(self._body, self._model.ee_link, computeForwardKinematics=1)[4][2]
        hand_links = range(self._joints[-1], self._num_links)  # the last controlled link and all below it
        return ee_z - min(self._bullet.getAABB(self._body, link)[0][2] for link in hand_links)

    def _make_block(self) -> int:
        half = [BLOCK_HALF_SIZE] * 3
        shape = self._bullet.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half)
        visual = self._bullet.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=[0.2, 0.4, 1, 1])
        return self._bullet.createMultiBody(baseMass=DEFAULT_TASK["block_mass"], baseCollisionShapeIndex=shape,
                                            baseVisualShapeIndex=visual,
                                            basePosition=[*BLOCK_START, BLOCK_HALF_SIZE])

    def _make_goal_marker(self) -> int:
        """A visual-only disc at the goal: no collision shape, so physics is the same with or without it."""
        shape = self._bullet.createVisualShape(pybullet.GEOM_CYLINDER, radius=0.025, length=0.002,
                                               rgbaColor=[1, 0.2, 0.2, 1])
        return self._bullet.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=shape,
                                            basePosition=[*GOAL_CENTER, 0.001])

    def _define_spaces(self) -> None:
        n = len(self._joints)
        block_low = [EE_POS_LOW[0], EE_POS_LOW[1], -0.5, *[-MAX_BLOCK_SPEED] * 3]
        block_high = [EE_POS_HIGH[0], EE_POS_HIGH[1], 2.0, *[MAX_BLOCK_SPEED] * 3]
        low = [*EE_POS_LOW, *[-MAX_EE_SPEED] * 3, *self._lower, *[-MAX_JOINT_SPEED] * n, *block_low]
        high = [*EE_POS_HIGH, *[MAX_EE_SPEED] * 3, *self._upper, *[MAX_JOINT_SPEED] * n, *block_high]
        self._obs_low = np.asarray(low, dtype=np.float32)
        self._obs_high = np.asarray(high, dtype=np.float32)
        self.observation_space = spaces.Box(self._obs_low, self._obs_high, dtype=np.float32)
        self.action_space = self._action_box(2)
        k = 6 + 2 * n
        self.obs_slices = {"ee_pos": slice(0, 3), "ee_vel": slice(3, 6), "joint_pos": slice(6, 6 + n),
                           "joint_vel": slice(6 + n, k), "block_pos": slice(k, k + 3),
                           "block_vel": slice(k + 3, k + 6)}

    # ------------------------------------------------------------------------------------ task
    def set_task(self, params: dict[str, Any]) -> None:
        """Set the hidden task: ``{"goal": [x, y], "block_mass": kg, "block_friction": mu}``."""
        self._task = validate_push_params(params)
        _, mass, friction = self._task
        inertia = mass * (2 * BLOCK_HALF_SIZE) ** 2 / 6  # solid cube; keeps the block's density consistent
        self._bullet.changeDynamics(self._block, -1, mass=mass, lateralFriction=friction,
                                    localInertiaDiagonal=[inertia] * 3)
        self._place_marker()

    def _place_marker(self) -> None:
        if self._marker is not None:
            self._bullet.resetBasePositionAndOrientation(self._marker, [*self._task[0], 0.001], [0, 0, 0, 1])

    def get_task(self) -> dict[str, Any]:
        """Return the current task params (a fresh dict)."""
        goal, mass, friction = self._task
        return {"goal": list(goal), "block_mass": mass, "block_friction": friction}

    # ------------------------------------------------------------------------------- gym API
    def _ee_target(self, action: list[float]) -> list[float]:
        """The hand moved by ``action * max_delta`` in x and y, clipped into the hand box, at pushing height."""
        (hx, hy), (ax, ay), md = self._hand_xy, action, self.max_delta
        return [min(max(hx + ax * md, HAND_LOW[0]), HAND_HIGH[0]),
                min(max(hy + ay * md, HAND_LOW[1]), HAND_HIGH[1]), self.push_height]

    def _observe(self) -> tuple[np.ndarray, bool]:
        """Read arm and block once; return the clipped observation and whether the raw state was finite."""
        self._raw_block_pos = self._get_block(self._block)[0]
        self._raw_block_vel = self._get_block_vel(self._block)[0]
        obs = np.array((*self._read_arm(), *self._raw_block_pos, *self._raw_block_vel), dtype=np.float32)
        finite = bool(np.isfinite(obs).all())
        if not finite:
            np.nan_to_num(obs, copy=False, nan=0.0)
        clamp(obs, self._obs_low, self._obs_high, out=obs)
        k = self.obs_slices["block_pos"].start
        self._hand_xy = (float(obs[0]), float(obs[1]))
        self._block_xy = (float(obs[k]), float(obs[k + 1]))
        return obs, finite

    def _score(self, nonfinite_action: bool) -> tuple[float, dict[str, Any]]:
        """Reward and info for the state just observed."""
        distance = math.dist(self._block_xy, self._task[0])
        hand_distance = math.dist(self._hand_xy, self._block_xy)
        success = distance < self.success_radius
        reward = -distance - self.hand_weight * hand_distance + (self.success_bonus if success else 0.0)
        return reward, {"distance": distance, "hand_distance": hand_distance, "success": success,
                        "nonfinite_action": nonfinite_action}

    def guard_signals(self) -> dict[str, float]:
        """Raw arm signals (see :class:`ArmEnv`) plus the block's speed and largest |coordinate|."""
        pos, vel = self._raw_block_pos, self._raw_block_vel
        return {**super().guard_signals(), "block_speed": math.hypot(*vel),
                "block_position": max(abs(x) for x in pos) + 0.0 * sum(pos)}
