"""ArmEnv: the pybullet machinery shared by the fixed-base arm tasks (reach, push).

One private DIRECT client per env holds a plane and one arm of the fleet (any ``RobotModel`` of kind
``"arm"``): the model's controlled joints (default ``0..n-1``), its held joints (e.g. the panda's closed fingers) kept
still, and the robot's variation (link masses, joint damping, motor strength) applied. Subclasses add
their own bodies, then call :meth:`ArmEnv._snapshot`, define the spaces (the action box from
:meth:`ArmEnv._action_box`) and implement ``_ee_target``, ``_observe`` and ``_score``.

Two action modes (``action_mode``), both tracked by position control for ``substeps`` physics steps at 240 Hz:

- ``"ee"`` (default): end-effector deltas. A world-frame target (the subclass's ``_ee_target``) is turned
  into joint targets by pybullet IK with the end-effector link pointing straight down.
- ``"joint"``: joint position deltas. An action in ``[-1, 1]^n`` (n controlled joints) moves each joint's
  target to its current position + ``action * max_joint_delta`` rad, clipped to the joint limits; one motor
  call for all joints and no IK. The end effector is free to tilt; the observation is the same (it
  already holds joint positions and velocities).

The robot's ``joint_gains`` (:attr:`fleet.robots.RobotSpec.joint_gains`) act in joint space only: in joint mode
the target is ``q + gain * action * max_joint_delta`` per joint (a reversed motor moves its joint the other way, a
failed one, gain 0, holds it where it is: an arm's joint brakes). IK commands whole joint configurations, where a
per-joint action gain has no meaning, so an ee-mode env refuses a robot with non-empty ``joint_gains``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from fleet.envs.quiet import quiet_stdout

with quiet_stdout():
    import pybullet

from fleet.envs.kinds import apply_reset_options
from fleet.envs.sim import SimEnv, data_file
from fleet.robots import RobotModel, RobotSpec, get_robot_model

PHYSICS_HZ = 240
# Generous box around anything a fixed-base arm at the origin can reach; only there to make bounds finite.
EE_POS_LOW = (-1.5, -1.5, -0.5)
EE_POS_HIGH = (1.5, 1.5, 2.0)
MAX_EE_SPEED = 10.0
MAX_JOINT_SPEED = 10.0  # the iiwa URDF's joint velocity limit (the panda's is 2.6 rad/s)
ACTION_MODES = ("ee", "joint")
# 0.05 rad per action (3 rad/s at 4 substeps) swings the KUKA's flange ~3 cm about its base joint: the
# same scale as the ee mode's 3 cm max_delta, so both modes cross the reach goal region in similar time.
MAX_JOINT_DELTA = 0.05
# Each target is at most a few cm from the current pose and pybullet starts IK from the current joint
# state, so few iterations suffice; IK is ~a third of the step cost. Measured here: 10 iterations reach
# every goal of a 5x5x5 grid; 3 leave some corners unreached.
IK_ITERATIONS = 10
# pybullet's default gain (0.1) moves the joints only ~1/3 of the way to their targets in 4 substeps,
# so the end effector lags the action; 0.5 follows ~90% of a commanded step, 1.0 overshoots.
POSITION_GAIN = 0.5
# Guard limits on raw signals. Tracking a 3 cm step never needs more than ~3 rad/s or 1 m/s, and a
# pushed block weighs at most a few N; values this far out only come from a blown-up simulation.
ARM_GUARD_LIMITS: dict[str, tuple[float, float]] = {
    "joint_speed": (0.0, 40.0),     # max |joint velocity|, rad/s
    "ee_speed": (0.0, 10.0),        # |end-effector linear velocity|, m/s
    "ee_position": (0.0, 3.0),      # max |coordinate| of the end effector, m
    "contact_force": (0.0, 1e4),    # max normal force of any contact on the robot, N
}


def clamp(x: np.ndarray, low: Any, high: Any, out: np.ndarray | None = None) -> np.ndarray:
    """``np.clip(x, low, high, out=out)`` for NaN-free ``x``, bit for bit, at a fraction of the cost.

    Measured here on these short vectors: numpy 2's ``np.clip`` ~9-12 us per call (Python-level dispatch),
    the two ufuncs ~2.5-4 us; a step clips up to three times, next to ~80-120 us of physics.
    """
    return np.minimum(np.maximum(x, low, out=out), high, out=out)


def down_orientation() -> tuple[float, float, float, float]:
    """The quaternion that points an end-effector link's z axis straight down (world -z)."""
    return tuple(pybullet.getQuaternionFromEuler([0.0, -math.pi, 0.0]))  # type: ignore[return-value]


class ArmEnv(SimEnv):
    """Base class of the arm envs: physics client, robot, variation, IK control, state reads, render.

    Subclasses add their bodies, spaces and default task in :meth:`_build` (called once the arm is loaded).

    Args:
        robot: The fleet member to simulate (or its ``to_dict()`` form); default ``RobotSpec()``. Its model
            must be an arm (``ValueError`` otherwise).
        horizon: Steps per episode; ``truncated`` is True at the last one.
        render_mode: ``None`` or ``"rgb_array"``.
        max_delta: End-effector displacement (m per axis) commanded by an action of 1.
        success_radius: Distance (m) to the goal under which a step counts as a success.
        success_bonus: Reward added on each successful step.
        substeps: Physics steps (at 240 Hz) per action.
        action_mode: ``"ee"`` (end-effector deltas through IK) or ``"joint"`` (joint position deltas); see
            the module docstring.
        max_joint_delta: Joint displacement (rad) commanded by an action of 1 in joint mode.
        joint_noise: Half-width (rad) of the seeded uniform noise added to the home pose on reset.
        render_size: ``(width, height)`` of rendered frames.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": PHYSICS_HZ // 4}
    guard_limits: dict[str, tuple[float, float]] = ARM_GUARD_LIMITS
    camera_target: tuple[float, float, float] = (0.3, 0.0, 0.3)
    camera: dict[str, float] = {"distance": 1.3, "yaw": 50.0, "pitch": -25.0}

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
        action_mode: str = "ee",
        max_joint_delta: float = MAX_JOINT_DELTA,
    ) -> None:
        self._init_sim(robot, RobotSpec(), horizon, render_mode, render_size)
        if max_delta <= 0 or success_radius <= 0 or not max_joint_delta > 0:
            raise ValueError(f"max_delta, success_radius and max_joint_delta must be positive, got {max_delta!r}, "
                             f"{success_radius!r}, {max_joint_delta!r}")
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        self.action_mode = action_mode
        if action_mode == "ee" and self.robot.joint_gains:
            raise ValueError(f"{type(self).__name__} in ee mode cannot apply the joint_gains of robot "
                             f"{self.robot.robot_id!r}: gains act in joint space only (IK bypasses them); use "
                             f"action_mode='joint' (families reach_joint, push_joint, robot_reach)")
        self.max_joint_delta = float(max_joint_delta)
        if substeps < 1 or joint_noise < 0:
            raise ValueError(f"substeps must be >= 1 and joint_noise >= 0, got {substeps!r}, {joint_noise!r}")
        self._model = arm_model(self.robot, type(self).__name__)
        self.substeps = int(substeps)
        self.joint_noise = float(joint_noise)
        self.metadata = {**self.metadata, "render_fps": round(PHYSICS_HZ / self.substeps)}
        self._joints = list(self._model.joints) or list(range(self._model.num_joints))
        self._home = list(self._model.home)
        self._t = 0
        self._connect_and_load()
        self.max_delta = float(max_delta)
        self.success_radius = float(success_radius)
        self.success_bonus = float(success_bonus)
        self._build()

    def _build(self) -> None:
        """Add the task's bodies, define the spaces, snapshot, set a default task (subclasses)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- setup
    def _connect_and_load(self) -> None:
        """Start the private physics client, load plane + robot, apply this robot's variation."""
        self._connect(1.0 / PHYSICS_HZ)
        client = self._bullet
        self._body = client.loadURDF(data_file(self._model.urdf), useFixedBase=True)
        self._num_links = client.getNumJoints(self._body)
        infos = [client.getJointInfo(self._body, j) for j in range(self._num_links)]
        self._setup_ik(infos)
        self._lower = [infos[j][8] for j in self._joints]
        self._upper = [infos[j][9] for j in self._joints]
        # Joint-mode target bounds; a URDF marks an unlimited joint with lower > upper.
        limited = np.asarray(self._lower) <= np.asarray(self._upper)
        self._target_low = np.where(limited, self._lower, -np.inf)
        self._target_high = np.where(limited, self._upper, np.inf)
        self._apply_variation([infos[j][6] for j in self._joints], [infos[j][10] for j in range(self._num_links)])
        self._down = down_orientation()
        # Hot calls bound once (SimEnv binds the ones every env uses).
        self._ik = client.calculateInverseKinematics
        self._link_state = client.getLinkState
        self._reset_joint = client.resetJointState
        self._set_joints(self._home)

    def _setup_ik(self, infos: list[tuple]) -> None:
        """IK works on every movable joint (fingers too): map its output back to the controlled joints."""
        dofs = [j for j, info in enumerate(infos) if info[2] != pybullet.JOINT_FIXED]
        missing = [j for j in self._joints if j not in dofs]
        if missing:
            raise ValueError(f"robot model {self._model.name!r}: controlled joints {missing} are fixed joints")
        held = dict(self._model.held_joints)
        self._held = list(held)
        self._held_targets = [held[j] for j in self._held]
        self._ik_lower = [infos[j][8] for j in dofs]
        self._ik_upper = [infos[j][9] for j in dofs]
        self._ik_ranges = [u - lo for lo, u in zip(self._ik_lower, self._ik_upper, strict=True)]
        self._ik_dofs = dofs
        # The common case (KUKA): IK's output is already the controlled joints' targets.
        self._ik_pick = None if dofs == self._joints else [dofs.index(j) for j in self._joints]

    def _ik_rest(self) -> list[float]:
        """IK null-space rest pose: home for the controlled joints, the held position for the others."""
        rest = dict(zip(self._joints, self._home, strict=True))
        rest.update(zip(self._held, self._held_targets, strict=True))
        return [rest.get(j, 0.0) for j in self._ik_dofs]

    def _apply_variation(self, urdf_damping: list[float], urdf_max_force: list[float]) -> None:
        """Scale link masses, add joint damping, scale motor forces as this robot's spec says."""
        client, spec = self._bullet, self.robot
        for link in range(-1, self._num_links):
            info = client.getDynamicsInfo(self._body, link)
            mass, inertia = info[0], info[2]
            if mass > 0:  # the fixed base has mass 0 (static); scaling it would make it dynamic
                client.changeDynamics(self._body, link, mass=mass * spec.link_mass_scale,
                                      localInertiaDiagonal=[i * spec.link_mass_scale for i in inertia])
        for joint, damping in zip(self._joints, urdf_damping, strict=True):
            client.changeDynamics(self._body, joint, jointDamping=damping + spec.joint_damping)
        self._forces = [urdf_max_force[j] * spec.motor_strength for j in self._joints]
        self._held_forces = [urdf_max_force[j] * spec.motor_strength for j in self._held]
        self._gains = [POSITION_GAIN] * len(self._joints)
        self._apply_gains(spec)

    def _apply_gains(self, spec: RobotSpec) -> None:
        """Joint mode's rad per unit action, per joint: the robot's joint gains folded into max_joint_delta, so
        applying them costs no more than the plain scale did (also :meth:`retarget`)."""
        self._joint_step = np.asarray(spec.gains, dtype=np.float64) * self.max_joint_delta

    def retarget(self, robot: RobotSpec) -> bool:
        """:meth:`SimEnv.retarget`, refused for joint gains in ee mode (IK bypasses them)."""
        if self.action_mode == "ee" and robot.joint_gains:
            return False
        return super().retarget(robot)

    def _set_joints(self, positions: list[float]) -> None:
        """Teleport the joints (zero velocity) and hold them, and the held joints, with the motors."""
        # One resetJointState per joint, not resetJointStatesMultiDof: measured here, the batched reset breaks
        # the replay of a pushed panda's block after env.reset (and this runs on reset only).
        for joint, q in zip(self._joints, positions, strict=True):
            self._reset_joint(self._body, joint, q, 0.0)
        self._motor(self._body, self._joints, pybullet.POSITION_CONTROL,
                    targetPositions=positions, forces=self._forces)
        if self._held:
            for joint, q in zip(self._held, self._held_targets, strict=True):
                self._reset_joint(self._body, joint, q, 0.0)
            self._motor(self._body, self._held, pybullet.POSITION_CONTROL,
                        targetPositions=self._held_targets, forces=self._held_forces)

    def _solve_pose(self, target: tuple[float, float, float], rounds: int = 20) -> list[float]:
        """Joint positions putting the end effector at ``target`` pointing down (teleporting; setup only)."""
        rest = self._ik_rest()
        self._set_joints(self._home)
        for _ in range(rounds):  # re-linearise from each solution: one IK call is only a local step
            solution = self._ik(self._body, self._model.ee_link, list(target), self._down, self._ik_lower,
                                self._ik_upper, self._ik_ranges, rest, maxNumIterations=100)
            self._set_joints(self._pick(solution))
        return self._pick(solution)

    def _action_box(self, ee_dims: int) -> spaces.Box:
        """The action space: ``ee_dims`` end-effector axes in ee mode, one entry per controlled joint in joint mode."""
        dims = ee_dims if self.action_mode == "ee" else len(self._joints)
        return spaces.Box(-1.0, 1.0, shape=(dims,), dtype=np.float32)

    def _pick(self, solution: tuple[float, ...]) -> list[float]:
        if self._ik_pick is None:
            return list(solution)
        return [solution[i] for i in self._ik_pick]

    def _snapshot(self) -> None:
        """Save the state every reset returns to; call once all bodies exist (restoreState needs them)."""
        self._set_joints(self._home)
        self._home_state = self._bullet.saveState()
        self._ik_rest_pose = self._ik_rest()

    # --------------------------------------------------------------------------------- runtime
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Back to (seeded noise around) the start pose; ``options={"task": params}`` sets the task first."""
        super().reset(seed=seed)
        apply_reset_options(self, options)
        self._restore()
        self._place_marker()  # restoreState moved it back to where it was at the snapshot
        obs, _ = self._observe()
        return obs, self._score(nonfinite_action=False)[1]

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move the end-effector target as :meth:`_ee_target` says (ee mode) or the joint targets (joint mode),
        and simulate ``substeps`` physics steps."""
        act = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape[0])
        nonfinite = not np.isfinite(act).all()
        if nonfinite:  # a NaN reaching pybullet silently poisons the whole simulation
            act = np.zeros(act.shape)
        act = clamp(act, -1.0, 1.0)  # not in place: act may be the caller's own array
        if self.action_mode == "joint":
            self._move_joints(act)
        else:
            self._move_ee(self._ee_target(act.tolist()))
        obs, finite = self._observe()
        reward, info = self._score(nonfinite_action=nonfinite)
        # A non-finite state cannot be stepped out of: end the episode so the caller resets.
        truncated = self._t >= self.horizon or not finite
        if not finite:
            info["nonfinite_obs"] = True
        return obs, reward, False, truncated, info

    def _restore(self) -> None:
        """Back to the snapshot, then seeded noise around home (call after ``super().reset(seed)``)."""
        # restoreState also resets solver caches and contacts, so a reset env replays exactly like a new one.
        self._bullet.restoreState(self._home_state)
        noise = self.np_random.uniform(-self.joint_noise, self.joint_noise, size=len(self._joints))
        self._set_joints([q + dq for q, dq in zip(self._home, noise.tolist(), strict=True)])
        self._t = 0

    def _move_ee(self, target: list[float]) -> None:
        """Command the end effector to ``target`` (down-pointing) and simulate ``substeps`` physics steps."""
        # restPoses=home: the null-space pull keeps the redundant elbow near home instead of drifting.
        solution = self._ik(self._body, self._model.ee_link, target, self._down, self._ik_lower,
                            self._ik_upper, self._ik_ranges, self._ik_rest_pose, maxNumIterations=IK_ITERATIONS)
        self._motor(self._body, self._joints, pybullet.POSITION_CONTROL,
                    targetPositions=self._pick(solution), forces=self._forces, positionGains=self._gains)
        for _ in range(self.substeps):
            self._step_sim()
        self._t += 1

    def _move_joints(self, action: np.ndarray) -> None:
        """Set every joint's target to its last read position + ``gain * action * max_joint_delta`` (within its
        limits) in one motor call, and simulate ``substeps`` physics steps."""
        # From the measured position, not the last target: the next target then depends only on the observation.
        # (A NaN state gives NaN targets; that state is lost anyway and step() has already truncated the episode.)
        targets = clamp(self._raw_q + action * self._joint_step, self._target_low, self._target_high)
        self._motor(self._body, self._joints, pybullet.POSITION_CONTROL,
                    targetPositions=targets.tolist(), forces=self._forces, positionGains=self._gains)
        for _ in range(self.substeps):
            self._step_sim()
        self._t += 1

    def _read_arm(self) -> list[float]:
        """Read the arm once: ``[ee_pos(3), ee_vel(3), joint_pos(n), joint_vel(n)]`` raw, and cache guard values."""
        states = self._joint_states(self._body, self._joints)
        link = self._link_state(self._body, self._model.ee_link, computeLinkVelocity=1,
                                computeForwardKinematics=1)
        positions, velocities = [s[0] for s in states], [s[1] for s in states]
        self._raw_q = np.array(positions)  # joint mode's next targets start here
        self._raw_ee_pos, self._raw_ee_vel = link[4], link[6]
        # max() drops NaN depending on position; the sum carries it, so a NaN state stays visible to the guard.
        self._raw_joint_speed = max(abs(v) for v in velocities) + 0.0 * sum(velocities)
        return [*link[4], *link[6], *positions, *velocities]

    def guard_signals(self) -> dict[str, float]:
        """Raw (unclipped) current values of the signals in ``guard_limits``; NaN when the state is NaN."""
        return {"joint_speed": self._raw_joint_speed, "ee_speed": math.hypot(*self._raw_ee_vel),
                "ee_position": max(abs(x) for x in self._raw_ee_pos) + 0.0 * sum(self._raw_ee_pos),
                "contact_force": self._max_contact_force(self._body)}

    def _max_contact_force(self, body: int) -> float:
        """Largest normal force among the current contacts of ``body`` (0 without contacts)."""
        forces = [point[9] for point in self._contacts(bodyA=body)]
        return max(forces) + 0.0 * sum(forces) if forces else 0.0

    def _camera_target(self) -> list[float]:
        return list(self.camera_target)


def arm_model(robot: RobotSpec, env_name: str) -> RobotModel:
    """The robot's model, which must be an arm; otherwise ``ValueError`` naming robot, kind and need."""
    model = get_robot_model(robot.model)
    if model.kind != "arm":
        raise ValueError(f"{env_name} needs an arm, but robot {robot.robot_id!r} is model {model.name!r} "
                         f"of kind {model.kind!r}; supported kinds: ('arm',)")
    return model
