"""ReachEnv: an arm of the fleet moves its end effector to a hidden goal (pybullet, one DIRECT client per env).

Works on every ``RobotModel`` of kind ``"arm"`` (KUKA iiwa, Franka panda). Observation (float32, every
entry clipped into finite bounds), for an arm with n controlled joints (n=7 for both):

- ``[0:3]``      ee_pos:    end-effector (flange link frame) position, m
- ``[3:6]``      ee_vel:    end-effector link linear velocity, m/s, clipped to ±10
- ``[6:6+n]``    joint_pos: joint positions, rad, clipped to the joint limits
- ``[6+n:6+2n]`` joint_vel: joint velocities, rad/s, clipped to ±10

``env.obs_slices`` holds these slices by name. The goal is *not* observed: the task is inferred
from reward (goal-hidden meta-RL).

Action: ``Box(-1, 1, (3,))``, an end-effector position delta of up to ``max_delta`` metres per axis.
The target (current position + delta) is clipped into the workspace box, turned into joint targets by
pybullet IK with the end-effector link pointing down, and tracked by position control for ``substeps``
physics steps at 240 Hz (:class:`fleet.envs.arm.ArmEnv`). With ``action_mode="joint"`` (the ``reach_joint``
family) the action is instead ``Box(-1, 1, (n,))``, joint position deltas of up to ``max_joint_delta`` rad, no
IK and no workspace box (the joint limits bound the targets); observation, reward and success are unchanged.

Reward: ``-distance(ee, goal) + success_bonus * (distance < success_radius)``. Episodes never
terminate; they truncate after ``horizon`` steps.

Usage::

    env = ReachEnv(RobotSpec(link_mass_scale=1.2), horizon=50)
    obs, info = env.reset(seed=0, options={"task": {"goal": [0.6, 0.1, 0.35]}})
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from fleet.envs.arm import EE_POS_HIGH, EE_POS_LOW, MAX_EE_SPEED, MAX_JOINT_SPEED, ArmEnv, clamp
from fleet.envs.quiet import quiet_stdout

with quiet_stdout():
    import pybullet

from fleet.envs.reach_task import GOAL_CENTER, WORKSPACE_HIGH, WORKSPACE_LOW, validate_goal


class ReachEnv(ArmEnv):
    """Goal-hidden reaching for one arm of the fleet; see the module docstring for the spaces and
    :class:`~fleet.envs.arm.ArmEnv` for the arguments (``horizon`` defaults to 50)."""

    def _build(self) -> None:
        self._define_spaces()
        self._marker = self._make_goal_marker() if self.render_mode == "rgb_array" else None
        self._snapshot()
        self._goal: tuple[float, float, float] = GOAL_CENTER
        self._ee_pos: tuple[float, float, float] = GOAL_CENTER
        self._read_arm()  # guard signals are defined from construction on
        self.set_task({"goal": list(GOAL_CENTER)})  # a usable default; workers call set_task per task

    def _define_spaces(self) -> None:
        n = len(self._joints)
        low = [*EE_POS_LOW, *[-MAX_EE_SPEED] * 3, *self._lower, *[-MAX_JOINT_SPEED] * n]
        high = [*EE_POS_HIGH, *[MAX_EE_SPEED] * 3, *self._upper, *[MAX_JOINT_SPEED] * n]
        self._obs_low = np.asarray(low, dtype=np.float32)
        self._obs_high = np.asarray(high, dtype=np.float32)
        self.observation_space = spaces.Box(self._obs_low, self._obs_high, dtype=np.float32)
        self.action_space = self._action_box(3)
        self.obs_slices = {"ee_pos": slice(0, 3), "ee_vel": slice(3, 6),
                           "joint_pos": slice(6, 6 + n), "joint_vel": slice(6 + n, 6 + 2 * n)}

    def _make_goal_marker(self) -> int:
        """A visual-only sphere at the goal: no collision shape, so physics is the same with or without it."""
        shape = self._bullet.createVisualShape(pybullet.GEOM_SPHERE, radius=0.025, rgbaColor=[1, 0.2, 0.2, 1])
        return self._bullet.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=-1,
                                            baseVisualShapeIndex=shape, basePosition=list(GOAL_CENTER))

    # ------------------------------------------------------------------------------------ task
    def set_task(self, params: dict[str, Any]) -> None:
        """Set the hidden goal: ``params = {"goal": [x, y, z]}`` (world frame, metres)."""
        self._goal = validate_goal(params)
        self._place_marker()

    def _place_marker(self) -> None:
        if self._marker is not None:
            self._bullet.resetBasePositionAndOrientation(self._marker, list(self._goal), [0, 0, 0, 1])

    def get_task(self) -> dict[str, Any]:
        """Return the current task params (a fresh dict)."""
        return {"goal": list(self._goal)}

    # ------------------------------------------------------------------------------- gym API
    def _ee_target(self, action: list[float]) -> list[float]:
        """The current end-effector position moved by ``action * max_delta``, clipped into the workspace."""
        md, lo, hi = self.max_delta, WORKSPACE_LOW, WORKSPACE_HIGH
        return [min(max(x + a * md, lo[i]), hi[i]) for i, (x, a) in enumerate(zip(self._ee_pos, action, strict=True))]

    def _observe(self) -> tuple[np.ndarray, bool]:
        """Read the state once; return the clipped observation and whether the raw state was finite."""
        obs = np.array(self._read_arm(), dtype=np.float32)
        self._ee_pos = self._raw_ee_pos
        finite = bool(np.isfinite(obs).all())
        if not finite:
            np.nan_to_num(obs, copy=False, nan=0.0)
            self._ee_pos = tuple(float(x) for x in obs[:3])
        clamp(obs, self._obs_low, self._obs_high, out=obs)
        return obs, finite

    def _score(self, nonfinite_action: bool) -> tuple[float, dict[str, Any]]:
        """Reward and info for the state just observed."""
        distance = math.dist(self._ee_pos, self._goal)
        success = distance < self.success_radius
        reward = -distance + (self.success_bonus if success else 0.0)
        return reward, {"distance": distance, "success": success, "nonfinite_action": nonfinite_action}
