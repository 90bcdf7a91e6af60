"""SimEnv: the pybullet set-up every fleet env shares (arms in :mod:`fleet.envs.arm`, legged robots in
:mod:`fleet.envs.locomotion`).

One private ``BulletClient(DIRECT)`` per env, connected quietly (pybullet prints on fd 1), with gravity, the
env's physics step, deterministic contact pairs and a floor plane; the argument checks every env makes; the
CPU tiny-renderer camera; ``close``. Subclasses load their robot into ``self._bullet`` after :meth:`SimEnv._connect`.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium
import numpy as np

from fleet.envs.quiet import quiet_stdout

with quiet_stdout():
    import pybullet
    import pybullet_data
    from pybullet_utils import bullet_client

from fleet.robots import RobotSpec, same_body

GRAVITY = -9.81


def data_file(name: str) -> str:
    """Path of a model file shipped with ``pybullet_data`` (``"plane.urdf"``, ``"kuka_iiwa/model.urdf"``...)."""
    return os.path.join(pybullet_data.getDataPath(), name)


class SimEnv(gymnasium.Env):
    """Base of the fleet's pybullet envs: robot spec, horizon, render mode, physics client, camera, close.

    Subclasses set ``metadata``, ``camera`` (distance, yaw, pitch), ``camera_far`` and
    :meth:`_camera_target`, call :meth:`_init_sim` and :meth:`_connect` in their constructor, then load bodies.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    camera: dict[str, float] = {"distance": 1.3, "yaw": 50.0, "pitch": -25.0}
    camera_far = 5.0

    def _init_sim(self, robot: RobotSpec | dict[str, Any] | None, default_robot: RobotSpec, horizon: int,
                  render_mode: str | None, render_size: tuple[int, int]) -> None:
        """Check and store what every env takes: robot (spec or its dict), horizon, render mode and size."""
        if isinstance(robot, dict):
            robot = RobotSpec.from_dict(robot)
        self.robot = robot if robot is not None else default_robot
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.horizon, self.render_mode, self.render_size = horizon, render_mode, render_size

    def retarget(self, robot: RobotSpec) -> bool:
        """Become ``robot`` in place when it differs from this env's robot only in id and ``joint_gains`` (they act
        on the action, not on the loaded body: :func:`fleet.robots.same_body`); False (nothing changed) otherwise
        or for an env whose gains are not its own to set. The next ``reset`` starts from the new robot."""
        if not same_body(self.robot, robot) or not hasattr(self, "_apply_gains"):
            return False
        self.robot = robot
        self._apply_gains(robot)
        return True

    def _connect(self, dt: float, **engine: Any) -> None:
        """Start the private physics client (gravity, step ``dt``, ``engine`` parameters) and load the floor."""
        with quiet_stdout():
            self._bullet = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        client = self._bullet
        client.setGravity(0.0, 0.0, GRAVITY)
        client.setTimeStep(dt)
        client.setPhysicsEngineParameter(deterministicOverlappingPairs=1, **engine)
        self._plane = client.loadURDF(data_file("plane.urdf"))
        # BulletClient rebuilds a functools.partial on every attribute access; bind the hot calls once.
        self._motor = client.setJointMotorControlArray
        self._step_sim = client.stepSimulation
        self._joint_states = client.getJointStates
        self._contacts = client.getContactPoints

    def _camera_target(self) -> list[float]:
        """The world point the camera looks at (subclasses follow their robot)."""
        return [0.0, 0.0, 0.0]

    def render(self) -> np.ndarray | None:
        """Return an ``(H, W, 3)`` uint8 frame (CPU tiny renderer) when ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            gymnasium.logger.warn("render() called without render_mode='rgb_array'; returning None")
            return None
        width, height = self.render_size
        view = self._bullet.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=self._camera_target(), roll=0.0, upAxisIndex=2, **self.camera)
        proj = self._bullet.computeProjectionMatrixFOV(fov=60.0, aspect=width / height, nearVal=0.05,
                                                       farVal=self.camera_far)
        _, _, rgba, _, _ = self._bullet.getCameraImage(width, height, viewMatrix=view, projectionMatrix=proj,
                                                       renderer=pybullet.ER_TINY_RENDERER)
        return np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3])

    def close(self) -> None:
        """Disconnect the physics client (idempotent)."""
        if getattr(self, "_bullet", None) is not None:
            self._bullet.disconnect()
            self._bullet = None
