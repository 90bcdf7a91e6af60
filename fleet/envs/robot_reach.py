"""RobotReachEnv: reach an *observed* goal with joint position deltas; only the robot is hidden.

The ``robot_reach`` family's env: :class:`fleet.envs.reach.ReachEnv` in joint mode (``Box(-1, 1, (n,))`` joint
position deltas, scaled per joint by the robot's ``joint_gains``), with the goal offset appended to the
observation. Knowing where the goal is, a policy's remaining unknown is the robot: which motors are reversed,
weak or failed. That makes it an exam of robot inference and robot-conditioned control.

Observation (float32, clipped; ``env.obs_slices``), n controlled joints (7 for the KUKA and the panda: 23 values):

- ``[0:6+2n]``         the reach observation (ee_pos, ee_vel, joint_pos, joint_vel)
- ``[6+2n:9+2n]``      goal_delta: ``goal - ee_pos``, m, clipped to ±``MAX_GOAL_DELTA``

Reward and success as reach (``-distance + bonus`` within 5 cm); horizon 50 by default.

Usage::

    env = RobotReachEnv(RobotSpec(joint_gains=(1, -1, 1, 1, 0, 1, 1)))
    obs, info = env.reset(seed=0, options={"task": {"goal": [0.6, 0.1, 0.35]}})
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from fleet.envs.arm import clamp
from fleet.envs.reach import ReachEnv

# Any goal minus any end-effector position inside the arm envs' coordinate box fits; only there to keep bounds finite.
MAX_GOAL_DELTA = 3.5


class RobotReachEnv(ReachEnv):
    """Goal-observed joint-space reaching; see the module docstring. Takes :class:`ReachEnv`'s arguments, except
    that ``action_mode`` is always ``"joint"``."""

    def __init__(self, robot: Any = None, horizon: int = 50, render_mode: str | None = None, **kwargs: Any) -> None:
        if kwargs.setdefault("action_mode", "joint") != "joint":
            raise ValueError(f"RobotReachEnv acts in joint space only, got action_mode={kwargs['action_mode']!r}")
        super().__init__(robot, horizon, render_mode, **kwargs)

    def _define_spaces(self) -> None:
        super()._define_spaces()
        size = self._obs_low.shape[0]
        self._obs_low = np.concatenate([self._obs_low, np.full(3, -MAX_GOAL_DELTA, np.float32)])
        self._obs_high = np.concatenate([self._obs_high, np.full(3, MAX_GOAL_DELTA, np.float32)])
        self.observation_space = spaces.Box(self._obs_low, self._obs_high, dtype=np.float32)
        self.obs_slices = {**self.obs_slices, "goal_delta": slice(size, size + 3)}

    def _observe(self) -> tuple[np.ndarray, bool]:
        """Read the state once; the reach observation plus ``goal - ee_pos``, clipped, and whether it was finite."""
        values = self._read_arm()
        ee = self._raw_ee_pos
        values += [g - e for g, e in zip(self._goal, ee, strict=True)]
        obs = np.array(values, dtype=np.float32)
        self._ee_pos = ee
        finite = bool(np.isfinite(obs).all())
        if not finite:  # as ReachEnv: the state is lost, the episode truncates; keep the numbers finite
            np.nan_to_num(obs, copy=False, nan=0.0)
            self._ee_pos = tuple(float(x) for x in obs[:3])
        clamp(obs, self._obs_low, self._obs_high, out=obs)
        return obs, finite
