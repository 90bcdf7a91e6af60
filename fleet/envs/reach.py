"""ReachEnv: a KUKA iiwa moves its end effector to a hidden goal (pybullet, one DIRECT client per env).

Observation (float32, every entry clipped into finite bounds), for an arm whose joints 0..n-1 are
its controlled joints (n=7 for the iiwa):

- ``[0:3]``      ee_pos:    end-effector (flange link frame) position, m
- ``[3:6]``      ee_vel:    end-effector link linear velocity, m/s, clipped to ±10
- ``[6:6+n]``    joint_pos: joint positions, rad, clipped to the joint limits
- ``[6+n:6+2n]`` joint_vel: joint velocities, rad/s, clipped to ±10

``env.obs_slices`` holds these slices by name. The goal is *not* observed: the task is inferred
from reward (goal-hidden meta-RL).

Action: ``Box(-1, 1, (3,))``, an end-effector position delta of up to ``max_delta`` metres per axis.
The target (current position + delta) is clipped into the workspace box, turned into joint targets by
pybullet IK with the flange pointing down, and tracked by position control for ``substeps`` physics
steps at 240 Hz.

Reward: ``-distance(ee, goal) + success_bonus * (distance < success_radius)``. Episodes never
terminate; they truncate after ``horizon`` steps.

Usage::

    env = ReachEnv(RobotSpec(link_mass_scale=1.2), horizon=50)
    obs, info = env.reset(seed=0, options={"task": {"goal": [0.6, 0.1, 0.35]}})
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

import math
import os
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from fleet.envs.quiet import quiet_stdout

with quiet_stdout():
    import pybullet
    import pybullet_data
    from pybullet_utils import bullet_client

from fleet.envs.reach_family import GOAL_CENTER, WORKSPACE_HIGH, WORKSPACE_LOW, validate_goal
from fleet.robots import RobotSpec, get_robot_model

PHYSICS_HZ = 240
# Generous box around anything a fixed-base arm at the origin can reach; only there to make bounds finite.
EE_POS_LOW = (-1.5, -1.5, -0.5)
EE_POS_HIGH = (1.5, 1.5, 2.0)
MAX_EE_SPEED = 10.0
MAX_JOINT_SPEED = 10.0  # the iiwa URDF's joint velocity limit
# Each target is at most a few cm from the current pose and pybullet starts IK from the current joint
# state, so few iterations suffice; IK is ~a third of the step cost. Measured here: 10 iterations reach
# every goal of a 5x5x5 grid; 3 leave some corners unreached.
IK_ITERATIONS = 10
# pybullet's default gain (0.1) moves the joints only ~1/3 of the way to their targets in 4 substeps,
# so the end effector lags the action; 0.5 follows ~90% of a commanded step, 1.0 overshoots.
POSITION_GAIN = 0.5
CAMERA = {"distance": 1.3, "yaw": 50.0, "pitch": -25.0}


class ReachEnv(gymnasium.Env):
    """Goal-hidden reaching for one robot of the fleet; see the module docstring for the spaces.

    Args:
        robot: The fleet member to simulate (or its ``to_dict()`` form); default ``RobotSpec()``.
        horizon: Steps per episode; ``truncated`` is True at the last one.
        render_mode: ``None`` or ``"rgb_array"``.
        max_delta: End-effector displacement (m per axis) commanded by an action of 1.
        success_radius: Distance (m) under which a step counts as a success.
        success_bonus: Reward added on each successful step.
        substeps: Physics steps (at 240 Hz) per action.
        joint_noise: Half-width (rad) of the seeded uniform noise added to the home pose on reset.
        render_size: ``(width, height)`` of rendered frames.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": PHYSICS_HZ // 4}

    def __init__(
        self,
        robot: RobotSpec | dict[str, Any] | None = None,
        horizon: int = 50,
        render_mode: str | None = None,
        *,
        max_delta: float = 0.03,
        success_radius: float = 0.05,
        success_bonus: float = 1.0,
        substeps: int = 4,
        joint_noise: float = 0.01,
        render_size: tuple[int, int] = (160, 120),
    ) -> None:
        if isinstance(robot, dict):
            robot = RobotSpec.from_dict(robot)
        self.robot = robot if robot is not None else RobotSpec()
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if substeps < 1 or max_delta <= 0 or success_radius <= 0 or joint_noise < 0:
            raise ValueError("substeps, max_delta and success_radius must be positive, joint_noise >= 0")
        self.horizon = horizon
        self.render_mode = render_mode
        self.max_delta = float(max_delta)
        self.success_radius = float(success_radius)
        self.success_bonus = float(success_bonus)
        self.substeps = int(substeps)
        self.joint_noise = float(joint_noise)
        self.render_size = render_size
        self.metadata = {**self.metadata, "render_fps": round(PHYSICS_HZ / self.substeps)}

        self._model = get_robot_model(self.robot.model)
        self._joints = list(range(self._model.num_joints))
        self._home = list(self._model.home)
        self._connect_and_load()
        self._define_spaces()
        self._marker = self._make_goal_marker() if render_mode == "rgb_array" else None
        # Snapshot after every body exists: restoreState needs the same bodies it saved.
        self._home_state = self._bullet.saveState()
        self._goal: tuple[float, float, float] = GOAL_CENTER
        self._ee_pos: tuple[float, float, float] = GOAL_CENTER
        self._t = 0
        self.set_task({"goal": list(GOAL_CENTER)})  # a usable default; workers call set_task per task

    # ----------------------------------------------------------------------------------- setup
    def _connect_and_load(self) -> None:
        """Start the private physics client, load plane + robot, apply this robot's variation."""
        with quiet_stdout():
            self._bullet = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        client = self._bullet
        client.setGravity(0.0, 0.0, -9.81)
        client.setTimeStep(1.0 / PHYSICS_HZ)
        client.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
        data = pybullet_data.getDataPath()
        client.loadURDF(os.path.join(data, "plane.urdf"))
        self._body = client.loadURDF(os.path.join(data, self._model.urdf), useFixedBase=True)
        infos = [client.getJointInfo(self._body, j) for j in self._joints]
        self._lower = [info[8] for info in infos]
        self._upper = [info[9] for info in infos]
        self._ranges = [u - lo for lo, u in zip(self._lower, self._upper, strict=True)]
        self._apply_variation([info[6] for info in infos], [info[10] for info in infos])
        self._down = client.getQuaternionFromEuler([0.0, -math.pi, 0.0])
        # BulletClient rebuilds a functools.partial on every attribute access; bind the hot calls once.
        self._ik = client.calculateInverseKinematics
        self._motor = client.setJointMotorControlArray
        self._step_sim = client.stepSimulation
        self._joint_states = client.getJointStates
        self._link_state = client.getLinkState
        self._reset_joint = client.resetJointState
        self._set_joints(self._home)

    def _apply_variation(self, urdf_damping: list[float], urdf_max_force: list[float]) -> None:
        """Scale link masses, add joint damping, scale motor forces as this robot's spec says."""
        client, spec = self._bullet, self.robot
        for link in [-1, *self._joints]:
            info = client.getDynamicsInfo(self._body, link)
            mass, inertia = info[0], info[2]
            if mass > 0:  # the fixed base has mass 0 (static); scaling it would make it dynamic
                client.changeDynamics(self._body, link, mass=mass * spec.link_mass_scale,
                                      localInertiaDiagonal=[i * spec.link_mass_scale for i in inertia])
        for joint, damping in zip(self._joints, urdf_damping, strict=True):
            client.changeDynamics(self._body, joint, jointDamping=damping + spec.joint_damping)
        self._forces = [force * spec.motor_strength for force in urdf_max_force]
        self._gains = [POSITION_GAIN] * len(self._joints)

    def _define_spaces(self) -> None:
        n = len(self._joints)
        low = [*EE_POS_LOW, *[-MAX_EE_SPEED] * 3, *self._lower, *[-MAX_JOINT_SPEED] * n]
        high = [*EE_POS_HIGH, *[MAX_EE_SPEED] * 3, *self._upper, *[MAX_JOINT_SPEED] * n]
        self._obs_low = np.asarray(low, dtype=np.float32)
        self._obs_high = np.asarray(high, dtype=np.float32)
        self.observation_space = spaces.Box(self._obs_low, self._obs_high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.obs_slices = {"ee_pos": slice(0, 3), "ee_vel": slice(3, 6),
                           "joint_pos": slice(6, 6 + n), "joint_vel": slice(6 + n, 6 + 2 * n)}

    def _make_goal_marker(self) -> int:
        """A visual-only sphere at the goal: no collision shape, so physics is the same with or without it."""
        shape = self._bullet.createVisualShape(pybullet.GEOM_SPHERE, radius=0.025, rgbaColor=[1, 0.2, 0.2, 1])
        return self._bullet.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=-1,
                                            baseVisualShapeIndex=shape, basePosition=list(GOAL_CENTER))

    def _set_joints(self, positions: list[float]) -> None:
        """Teleport the joints (zero velocity) and hold them there with the motors."""
        for joint, q in zip(self._joints, positions, strict=True):
            self._reset_joint(self._body, joint, q, 0.0)
        self._motor(self._body, self._joints, pybullet.POSITION_CONTROL,
                    targetPositions=positions, forces=self._forces)

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
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Return the robot to (seeded noise around) home; ``options={"task": params}`` sets the goal."""
        super().reset(seed=seed)
        options = options or {}
        unknown = sorted(set(options) - {"task"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; valid: ['task']")
        if "task" in options:
            self.set_task(options["task"])
        # restoreState also resets solver caches and contacts, so a reset env replays exactly like a new one.
        self._bullet.restoreState(self._home_state)
        self._place_marker()  # restoreState moved it back to where it was at the snapshot
        noise = self.np_random.uniform(-self.joint_noise, self.joint_noise, size=len(self._joints))
        self._set_joints([q + dq for q, dq in zip(self._home, noise.tolist(), strict=True)])
        self._t = 0
        obs, _ = self._observe()
        distance = math.dist(self._ee_pos, self._goal)
        return obs, self._info(distance, nonfinite_action=False)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move the end-effector target by ``action * max_delta`` and simulate ``substeps`` physics steps."""
        act = np.asarray(action, dtype=np.float64).reshape(3)
        nonfinite = not np.isfinite(act).all()
        if nonfinite:  # a NaN reaching pybullet silently poisons the whole simulation
            act = np.zeros(3)
        ax, ay, az = np.clip(act, -1.0, 1.0).tolist()
        ex, ey, ez = self._ee_pos
        md, lo, hi = self.max_delta, WORKSPACE_LOW, WORKSPACE_HIGH
        target = [min(max(ex + ax * md, lo[0]), hi[0]),
                  min(max(ey + ay * md, lo[1]), hi[1]),
                  min(max(ez + az * md, lo[2]), hi[2])]
        # restPoses=home: the null-space pull keeps the redundant elbow near home instead of drifting.
        joint_targets = self._ik(self._body, self._model.ee_link, target, self._down, self._lower,
                                 self._upper, self._ranges, self._home, maxNumIterations=IK_ITERATIONS)
        self._motor(self._body, self._joints, pybullet.POSITION_CONTROL,
                    targetPositions=joint_targets, forces=self._forces,
                    positionGains=self._gains)
        for _ in range(self.substeps):
            self._step_sim()
        self._t += 1
        obs, finite = self._observe()
        distance = math.dist(self._ee_pos, self._goal)
        success = distance < self.success_radius
        reward = -distance + (self.success_bonus if success else 0.0)
        # A non-finite state cannot be stepped out of: end the episode so the caller resets.
        truncated = self._t >= self.horizon or not finite
        info = self._info(distance, nonfinite_action=nonfinite)
        if not finite:
            info["nonfinite_obs"] = True
        return obs, reward, False, truncated, info

    def _observe(self) -> tuple[np.ndarray, bool]:
        """Read the state once; return the clipped observation and whether the raw state was finite."""
        states = self._joint_states(self._body, self._joints)
        link = self._link_state(self._body, self._model.ee_link, computeLinkVelocity=1,
                                computeForwardKinematics=1)
        self._ee_pos = link[4]
        obs = np.array((*link[4], *link[6], *[s[0] for s in states], *[s[1] for s in states]),
                       dtype=np.float32)
        finite = bool(np.isfinite(obs).all())
        if not finite:
            np.nan_to_num(obs, copy=False, nan=0.0)
            self._ee_pos = tuple(float(x) for x in obs[:3])
        np.clip(obs, self._obs_low, self._obs_high, out=obs)
        return obs, finite

    def _info(self, distance: float, nonfinite_action: bool) -> dict[str, Any]:
        return {"distance": distance, "success": distance < self.success_radius,
                "nonfinite_action": nonfinite_action}

    def render(self) -> np.ndarray | None:
        """Return an ``(H, W, 3)`` uint8 frame (CPU tiny renderer) when ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            gymnasium.logger.warn("render() called without render_mode='rgb_array'; returning None")
            return None
        width, height = self.render_size
        view = self._bullet.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=[0.3, 0.0, 0.3], roll=0.0, upAxisIndex=2, **CAMERA)
        proj = self._bullet.computeProjectionMatrixFOV(fov=60.0, aspect=width / height, nearVal=0.05,
                                                       farVal=5.0)
        _, _, rgba, _, _ = self._bullet.getCameraImage(width, height, viewMatrix=view,
                                                       projectionMatrix=proj,
                                                       renderer=pybullet.ER_TINY_RENDERER)
        frame = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)
        return np.ascontiguousarray(frame[:, :, :3])

    def close(self) -> None:
        """Disconnect the physics client (idempotent)."""
        if getattr(self, "_bullet", None) is not None:
            self._bullet.disconnect()
            self._bullet = None
