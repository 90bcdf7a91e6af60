"""`SimRobot`: a simulated fleet robot (one pybullet fleet env) behind the `Robot` protocol.

This is the one robot-side module that needs the simulator (pybullet, gymnasium through :mod:`fleet`):
the runtime, the safety layer, the wire format and the bridge never import it; only
:func:`deploy.connect.connect_robot` (lazily, for ``sim:`` addresses) and tests/benchmarks do.
"""

from __future__ import annotations

import numpy as np

from fleet.envs.quiet import quiet_stdout

with quiet_stdout():  # pybullet's C-level build banner
    import pybullet

import fleet
from deploy.robot import Step


class SimRobot:
    """A simulated fleet robot: one fleet env behind the `Robot` protocol.

    Args:
        family: Task family name (``"reach"``).
        robot: The fleet member (a ``RobotSpec`` or its dict); default ``RobotSpec()``.
        horizon: Steps per episode; ``Step.done`` is True at the last one.
        task: Task params set now and kept until a ``reset(task=...)`` changes them.
        render: Keep a renderer so :meth:`frame` returns RGB frames (160x120, CPU TinyRenderer).
    """

    def __init__(self, family: str = "reach", robot: fleet.RobotSpec | dict | None = None, horizon: int = 50,
                 task: dict | None = None, render: bool = False):
        spec = fleet.RobotSpec.from_dict(robot) if isinstance(robot, dict) else (robot or fleet.RobotSpec())
        self.robot_spec = spec
        self.family = family
        self._env = fleet.make_env(family, spec, horizon, render_mode="rgb_array" if render else None)
        try:
            if task is not None:
                self._env.set_task(task)
        except Exception:
            self._env.close()
            raise
        self.observation_shape = tuple(self._env.observation_space.shape)
        self.action_low = np.asarray(self._env.action_space.low, dtype=np.float32)
        self.action_high = np.asarray(self._env.action_space.high, dtype=np.float32)
        self._render = render
        self._obs: np.ndarray | None = None

    def reset(self, task: dict | None = None, seed: int | None = None) -> np.ndarray:
        options = {"task": task} if task is not None else None
        self._obs, _ = self._env.reset(seed=seed, options=options)
        return self._obs.copy()

    def observe(self) -> np.ndarray:
        if self._obs is None:
            raise RuntimeError("observe() before reset()")
        return self._obs.copy()

    def act(self, action: np.ndarray) -> Step:
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        self._obs = obs
        return Step(obs.copy(), float(reward), bool(terminated or truncated),
                    {**info, "terminated": bool(terminated), "truncated": bool(truncated)})

    def hold(self) -> None:
        """Keep the current joint positions: position targets where the joints are, zero target velocity.

        The simulator only advances inside ``act``, so the hold shows the next time physics is stepped
        (without it the motors would go on tracking the last command's targets). A plugin env without the
        built-in pybullet joints has no motor state between steps: nothing to hold.
        """
        env = self._env.unwrapped
        if not all(hasattr(env, name) for name in ("_motor", "_joint_states", "_body", "_joints")):
            return
        positions = [state[0] for state in env._joint_states(env._body, env._joints)]
        motor = {"targetPositions": positions, "targetVelocities": [0.0] * len(positions)}
        if getattr(env, "_forces", None) is not None:
            motor["forces"] = list(env._forces)
        env._motor(env._body, env._joints, pybullet.POSITION_CONTROL, **motor)

    def stop(self) -> None:
        """Halt motion: in the simulator, the same as :meth:`hold` (nothing moves between steps but motors)."""
        self.hold()

    def frame(self) -> np.ndarray | None:
        """The current RGB frame ``(H, W, 3)`` uint8 when built with ``render=True``, else None."""
        return self._env.render() if self._render else None

    def close(self) -> None:
        self._env.close()
