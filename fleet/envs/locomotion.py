"""LocomotionEnv: a legged robot (planar half-cheetah or A1 quadruped) runs under a hidden task.

One pybullet ``BulletClient(DIRECT)`` per env: floor plane + robot, PD position control. The task
(``velocity``, ``direction``, ``dynamics``, ``robot_run``; :mod:`fleet.envs.locomotion_tasks`) is hidden: it
shapes the reward and, for ``dynamics``, the body, never the observation.

Observation (float32, clipped into finite bounds; ``env.obs_slices`` names the parts), n actuated joints:

- planar (cheetah, 5 + 2n = 17, gym's HalfCheetah layout): base height, pitch, vx, vz, pitch rate,
  joint positions, joint velocities
- quadruped (A1, 9 + 2n = 33): base height, roll, pitch, base linear velocity (3), base angular velocity (3),
  joint positions, joint velocities

Neither the x/y position nor the task params are observed. Velocities are in the world frame.

Action: ``Box(-1, 1, (n,))``, joint position targets: 0 is the home (standing) pose, ±1 the ends of each
joint's action window (the cheetah: its joint range; the A1: home ± 0.6 rad within the joint range), tracked
by position control with the robot's motor limits for ``substeps`` physics steps. The robot's ``joint_gains``
multiply the action per joint first (then clipped to ±1 again): a reversed motor (gain < 0) drives its joint to
the mirrored target, and a failed one (gain 0) is limp (no motor force at all, as the ``dynamics`` family's
failed motor), so its action has no effect.

Forward velocity = x displacement of the base over the action / its duration. A quadruped whose base drops
below ``fall_height`` or tilts past ``fall_tilt`` terminates; the cheetah never terminates (as in MAML).
Episodes truncate after ``horizon`` steps.

Usage::

    env = LocomotionEnv(RobotSpec(robot_id="a1-0", model="a1"), horizon=100, task="velocity")
    obs, info = env.reset(seed=0, options={"task": {"speed": 0.5}})
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from fleet.envs.quiet import quiet_stdout

with quiet_stdout():
    import pybullet

from fleet.envs.kinds import apply_reset_options
from fleet.envs.locomotion_tasks import GAITS, LOCOMOTION_KINDS, LOCOMOTION_TASKS
from fleet.envs.sim import SimEnv, data_file
from fleet.robots import RobotSpec, get_robot_model


@dataclass(frozen=True)
class Physics:
    """Simulation settings of one robot kind (measured here: stable, and as fast as that allows)."""

    dt: float  # physics step, s
    substeps: int  # physics steps per action
    solver_iterations: int  # pybullet's numSolverIterations (default 50): the main cost of a physics step
    action_span: float  # rad either side of home an action of ±1 may ask for (inf: the joint range)
    start_height: float  # base height the robot is dropped from before settling
    settle_steps: int  # physics steps holding home before the reset snapshot, so episodes start standing
    fall_height: float  # a base below this (m) has fallen (0: never)
    fall_tilt: float  # |roll| or |pitch| beyond this (rad) has fallen (inf: never)


# Cheetah: 0.05 s per action as MuJoCo's (0.01 s x 5); 0.025 s x 2 with 20 solver iterations is as stable under
# position control (see GUARD_LIMITS for what random actions reach) and ~2.5x faster.
# A1: 1/120 s x 4 substeps (30 Hz control) walks the scripted trot like 1/240 s x 8 at twice the speed.
PHYSICS: dict[str, Physics] = {
    "planar": Physics(dt=0.025, substeps=2, solver_iterations=20, action_span=math.inf, start_height=0.0,
                      settle_steps=20, fall_height=0.0, fall_tilt=math.inf),
    "quadruped": Physics(dt=1 / 120, substeps=4, solver_iterations=20, action_span=0.6, start_height=0.30,
                         settle_steps=60, fall_height=0.15, fall_tilt=1.0),
}
PLANAR_ROOT = (0, 1, 2)  # the mjcf's root joints: slide x, slide z, hinge y (pitch)
POSITION_GAIN = 0.5
MAX_HEIGHT = 2.0
MAX_ANGLE = 10.0  # the cheetah's pitch is an unlimited hinge; flips accumulate
MAX_LINEAR_SPEED = 20.0
MAX_ANGULAR_SPEED = 50.0
MAX_JOINT_SPEED = 60.0  # above the A1's 52.4 rad/s hip limit
# pybullet clamps joint speeds at 100 rad/s by default, which a light, strong cheetah flailing at random reaches
# (95 rad/s measured): a blow-up would then look like normal motion. Raised, so the guard can tell them apart.
JOINT_SPEED_CLAMP = 1000.0
RECENT_WINDOW = 10  # steps averaged for "the velocity at the end" (success)
# Measured here (random actions, 100-step episodes, dynamics tasks incl. each motor failed, mass scale 0.5-2,
# motor strength 0.5-2, damping 0-20): joint speed <= 80 rad/s, base height 0.10-1.7 m (the cheetah leaps), contact
# normal force < 4e3 N, base speed < 6 m/s. A blown-up simulation goes past these by orders of magnitude (joint
# speeds hit the clamp, the base is flung or sinks through the floor).
GUARD_LIMITS: dict[str, tuple[float, float]] = {
    "joint_speed": (0.0, 150.0),
    "base_height": (-0.1, 3.0),
    "contact_force": (0.0, 5e4),
    "base_speed": (0.0, 30.0),
}
CAMERA = {"distance": 2.0, "yaw": 0.0, "pitch": -20.0}


class LocomotionEnv(SimEnv):
    """A legged robot of the fleet under a hidden locomotion task; see the module docstring for the spaces.

    Args:
        robot: The fleet member (or its ``to_dict()`` form); default a half-cheetah. Its model's kind must be
            ``"planar"`` or ``"quadruped"``.
        horizon: Steps per episode; ``truncated`` is True at the last one.
        render_mode: ``None`` or ``"rgb_array"``.
        task: Task family name: ``"velocity"``, ``"direction"``, ``"dynamics"`` or ``"robot_run"``.
        joint_noise: Half-width (rad) of the seeded uniform noise on the joint positions at reset (the joint
            velocities get ten times as much, in rad/s).
        render_size: ``(width, height)`` of rendered frames.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    camera = CAMERA
    camera_far = 10.0

    def __init__(
        self,
        robot: RobotSpec | dict[str, Any] | None = None,
        horizon: int = 100,
        render_mode: str | None = None,
        *,
        task: str = "velocity",
        joint_noise: float = 0.05,
        render_size: tuple[int, int] = (160, 120),
    ) -> None:
        self._init_sim(robot, RobotSpec(robot_id="cheetah-0", model="half_cheetah"), horizon, render_mode,
                       render_size)
        self._model = get_robot_model(self.robot.model)
        if self._model.kind not in LOCOMOTION_KINDS:
            raise ValueError(f"LocomotionEnv cannot run robot {self.robot.robot_id!r} (model {self.robot.model!r}, "
                             f"kind {self._model.kind!r}); supported kinds: {', '.join(LOCOMOTION_KINDS)}")
        if task not in LOCOMOTION_TASKS:
            raise ValueError(f"unknown locomotion task {task!r}; valid: {', '.join(LOCOMOTION_TASKS)}")
        if not joint_noise >= 0:
            raise ValueError(f"joint_noise must be >= 0, got {joint_noise!r}")
        self.joint_noise = float(joint_noise)
        self.family = LOCOMOTION_TASKS[task]
        self.physics = PHYSICS[self._model.kind]
        self.gait = GAITS[self._model.kind]
        self.planar = self._model.kind == "planar"
        self.action_dt = self.physics.dt * self.physics.substeps
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.action_dt)}
        self.guard_limits = dict(GUARD_LIMITS)
        self._joints = list(self._model.joints or range(self._model.num_joints))
        self._home = np.asarray(self._model.home, dtype=np.float64)
        self._connect_and_load()
        self._define_spaces()
        self._loaded_state = self._bullet.saveState()  # before settling: retarget() settles a new robot from here
        self._settle()
        self._home_state = self._bullet.saveState()  # after settling: every episode starts standing
        self._params: dict[str, Any] = {}
        self._t, self._x, self._recent = 0, 0.0, np.zeros(RECENT_WINDOW)
        self._raw: dict[str, float] = {}
        self.set_task(self.family.sample_params(np.random.default_rng(0)))  # usable default; workers set tasks

    # ----------------------------------------------------------------------------------- setup
    def _connect_and_load(self) -> None:
        """Start the private physics client, load plane + robot, record limits, apply the robot's variation."""
        self._connect(self.physics.dt, numSolverIterations=self.physics.solver_iterations)
        client = self._bullet
        path = data_file(self._model.urdf)
        if self._model.loader == "mjcf":
            self._body = client.loadMJCF(path)[0]
        else:
            self._body = client.loadURDF(path, [0.0, 0.0, self.physics.start_height])
        infos = [client.getJointInfo(self._body, j) for j in self._joints]
        lower = np.array([info[8] for info in infos])
        upper = np.array([info[9] for info in infos])
        self._lower, self._upper = lower, upper
        span = self.physics.action_span
        self._window_low = np.maximum(lower, self._home - span) - self._home
        self._window_high = np.minimum(upper, self._home + span) - self._home
        self._file_forces = list(self._model.max_forces or [info[10] for info in infos])
        self._apply_variation([info[6] for info in infos])
        if self.planar:  # the root joints must be free: no default velocity motor holding them
            client.setJointMotorControlArray(self._body, list(PLANAR_ROOT), pybullet.VELOCITY_CONTROL,
                                             forces=[0.0] * 3)
            self._state_joints = [*PLANAR_ROOT, *self._joints]
            self._torso_z0 = client.getLinkState(self._body, self._model.ee_link)[0][2]
        # Hot calls bound once (SimEnv binds the ones every env uses).
        self._base_pose = client.getBasePositionAndOrientation
        self._base_velocity = client.getBaseVelocity
        self._euler = client.getEulerFromQuaternion

    def _apply_variation(self, file_damping: list[float]) -> None:
        """Set the model's link masses, then scale masses, add joint damping, scale motor forces per the spec."""
        client, spec = self._bullet, self.robot
        overrides = dict(self._model.link_masses)
        self._link_masses: dict[int, float] = {}
        for link in range(-1, client.getNumJoints(self._body)):
            info = client.getDynamicsInfo(self._body, link)
            mass, inertia = info[0], info[2]
            if mass <= 0:  # static anchors and massless root links stay as they are
                continue
            new_mass = overrides.get(link, mass) * spec.link_mass_scale
            client.changeDynamics(self._body, link, mass=new_mass,
                                  localInertiaDiagonal=[i * new_mass / mass for i in inertia])
            self._link_masses[link] = new_mass
        for joint, damping in zip(self._joints, file_damping, strict=True):
            # Two calls: pybullet drops jointDamping when maxJointVelocity comes in the same call.
            client.changeDynamics(self._body, joint, maxJointVelocity=JOINT_SPEED_CLAMP)
            client.changeDynamics(self._body, joint,
                                  jointDamping=damping + spec.joint_damping * self._model.damping_scale)
        self._gains = [POSITION_GAIN] * len(self._joints)
        self._apply_gains(spec)

    def _apply_gains(self, spec: RobotSpec) -> None:
        """Motor forces and the per-joint action gain from the robot's joint gains (also :meth:`retarget`; the
        next reset re-applies the task, which starts from these forces)."""
        gains = spec.gains
        # A failed motor (gain 0) exerts no force: limp, not held at home by a still-working position loop.
        self._robot_forces = [force * spec.motor_strength * (gain != 0.0)
                              for force, gain in zip(self._file_forces, gains, strict=True)]
        self._forces = list(self._robot_forces)
        # None for the nominal robot: its step then skips the multiply entirely.
        self._action_gain = np.asarray(gains, dtype=np.float64) if spec.joint_gains else None

    def _define_spaces(self) -> None:
        n = len(self._joints)
        if self.planar:
            head = [(0.0, MAX_HEIGHT), (-MAX_ANGLE, MAX_ANGLE), *[(-MAX_LINEAR_SPEED, MAX_LINEAR_SPEED)] * 2,
                    (-MAX_ANGULAR_SPEED, MAX_ANGULAR_SPEED)]
            names = {"height": 1, "pitch": 1, "linear_velocity": 2, "angular_velocity": 1}
        else:
            head = [(0.0, MAX_HEIGHT), *[(-math.pi, math.pi)] * 2, *[(-MAX_LINEAR_SPEED, MAX_LINEAR_SPEED)] * 3,
                    *[(-MAX_ANGULAR_SPEED, MAX_ANGULAR_SPEED)] * 3]
            names = {"height": 1, "roll_pitch": 2, "linear_velocity": 3, "angular_velocity": 3}
        names.update({"joint_pos": n, "joint_vel": n})
        low = [lo for lo, _ in head] + self._lower.tolist() + [-MAX_JOINT_SPEED] * n
        high = [hi for _, hi in head] + self._upper.tolist() + [MAX_JOINT_SPEED] * n
        self._obs_low = np.asarray(low, dtype=np.float32)
        self._obs_high = np.asarray(high, dtype=np.float32)
        self.observation_space = spaces.Box(self._obs_low, self._obs_high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)
        self.obs_slices, start = {}, 0
        for name, size in names.items():
            self.obs_slices[name] = slice(start, start + size)
            start += size

    def retarget(self, robot: RobotSpec) -> bool:
        """:meth:`SimEnv.retarget`, then the new robot settles from the loaded state, as a new env's does (a failed
        motor stands differently), and that is where its episodes start."""
        if not super().retarget(robot):
            return False
        self._bullet.restoreState(self._loaded_state)
        self._settle()
        self._bullet.removeState(self._home_state)
        self._home_state = self._bullet.saveState()
        return True

    def _settle(self) -> None:
        """Put the joints at home and let the robot stand on them for ``settle_steps`` physics steps."""
        for joint, q in zip(self._joints, self._home.tolist(), strict=True):
            self._bullet.resetJointState(self._body, joint, q, 0.0)
        self._command(self._home)
        for _ in range(self.physics.settle_steps):
            self._step_sim()

    def _command(self, targets: np.ndarray) -> None:
        self._motor(self._body, self._joints, pybullet.POSITION_CONTROL, targetPositions=targets.tolist(),
                    forces=self._forces, positionGains=self._gains)

    # ------------------------------------------------------------------------------------ task
    def set_task(self, params: dict[str, Any]) -> None:
        """Set the hidden task (params of this env's family); ``dynamics`` params also change the body."""
        self._params = self.family.validate(params)
        payload = self._params.get("payload", 0.0)
        base = self._model.ee_link
        self._bullet.changeDynamics(self._body, base, mass=self._link_masses[base] + payload)
        self._bullet.changeDynamics(self._plane, -1, lateralFriction=self._params.get("friction", 1.0))
        self._forces = list(self._robot_forces)
        if "weak_joint" in self._params:
            weak = self._params["weak_joint"] % len(self._joints)
            self._forces[weak] *= self._params["weak_strength"]

    def get_task(self) -> dict[str, Any]:
        """Return the current task params (a fresh dict)."""
        return dict(self._params)

    # ------------------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Return to the settled standing pose plus seeded joint noise; ``options={"task": params}`` sets the task."""
        super().reset(seed=seed)
        apply_reset_options(self, options)
        # restoreState also resets solver caches and contacts, so a reset env replays exactly like a new one.
        self._bullet.restoreState(self._home_state)
        n = len(self._joints)
        dq = self.np_random.uniform(-self.joint_noise, self.joint_noise, size=n)
        dqd = self.np_random.uniform(-10 * self.joint_noise, 10 * self.joint_noise, size=n)
        states = self._joint_states(self._body, self._joints)
        for joint, state, noise, vel in zip(self._joints, states, dq.tolist(), dqd.tolist(), strict=True):
            self._bullet.resetJointState(self._body, joint, state[0] + noise, state[1] + vel)
        self._command(self._home)
        self._t, self._recent = 0, np.zeros(RECENT_WINDOW)
        obs, _ = self._observe()
        return obs, {"forward_velocity": 0.0, "x_position": self._x, "success": False, "nonfinite_action": False}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Track joint targets ``home + action * window`` for ``substeps`` physics steps; score with the task."""
        act = np.asarray(action, dtype=np.float64).reshape(len(self._joints))
        nonfinite = not np.isfinite(act).all()
        if nonfinite:  # a NaN reaching pybullet silently poisons the whole simulation
            act = np.zeros_like(act)
        act = np.clip(act, -1.0, 1.0)
        # minimum/maximum, not np.clip: a third of the cost on a 6-12 vector (np.clip's dispatch is ~10 us).
        motor = act if self._action_gain is None else np.minimum(np.maximum(act * self._action_gain, -1.0), 1.0)
        self._command(self._home + np.where(motor >= 0, motor * self._window_high, -motor * self._window_low))
        x_before = self._x
        for _ in range(self.physics.substeps):
            self._step_sim()
        self._t += 1
        obs, finite = self._observe()
        velocity = (self._x - x_before) / self.action_dt if finite else 0.0
        self._recent[(self._t - 1) % RECENT_WINDOW] = velocity
        recent = float(self._recent[: min(self._t, RECENT_WINDOW)].mean())
        # The control cost is on what the policy asked for, not on what the robot's gains made of it.
        score = self.family.score(self._params, self.gait, velocity, recent, float(act @ act))
        terminated = finite and self._fallen()
        truncated = self._t >= self.horizon or not finite  # a non-finite state cannot be stepped out of
        info = {"forward_velocity": velocity, "target_velocity": score.target_velocity, "x_position": self._x,
                "success": score.success, "nonfinite_action": nonfinite}
        if not finite:
            info["nonfinite_obs"] = True
        return obs, score.reward, terminated, truncated, info

    def _fallen(self) -> bool:
        raw = self._raw
        return raw["base_height"] < self.physics.fall_height or raw["tilt"] > self.physics.fall_tilt

    def _observe(self) -> tuple[np.ndarray, bool]:
        """Read the state once; return the clipped observation and whether the raw state was finite."""
        head, joint_states = self._read_planar() if self.planar else self._read_quadruped()
        q = [s[0] for s in joint_states]
        qd = [s[1] for s in joint_states]
        obs = np.array((*head, *q, *qd), dtype=np.float32)
        self._raw["joint_speed"] = float(np.abs(qd).max())
        finite = bool(np.isfinite(obs).all()) and math.isfinite(self._x)
        if not finite:
            np.nan_to_num(obs, copy=False, nan=0.0)
            self._x = 0.0
        np.clip(obs, self._obs_low, self._obs_high, out=obs)
        return obs, finite

    def _read_planar(self) -> tuple[list[float], Sequence[Any]]:
        states = self._joint_states(self._body, self._state_joints)
        (x, vx), (dz, vz), (pitch, wy) = (s[:2] for s in states[:3])
        height = self._torso_z0 + dz
        self._x = x
        self._raw.update(base_height=height, tilt=abs(pitch), base_speed=math.hypot(vx, vz))
        return [height, pitch, vx, vz, wy], states[3:]

    def _read_quadruped(self) -> tuple[list[float], Sequence[Any]]:
        position, orientation = self._base_pose(self._body)
        linear, angular = self._base_velocity(self._body)
        roll, pitch, _ = self._euler(orientation)
        self._x = position[0]
        self._raw.update(base_height=position[2], tilt=max(abs(roll), abs(pitch)), base_speed=math.hypot(*linear))
        return [position[2], roll, pitch, *linear, *angular], self._joint_states(self._body, self._joints)

    # ---------------------------------------------------------------------------------- guard
    def guard_signals(self) -> dict[str, float]:
        """Raw (unclipped) values of the :attr:`guard_limits` signals after the last reset or step."""
        contacts = self._contacts(bodyA=self._body)
        force = max((c[9] for c in contacts), default=0.0)
        return {"joint_speed": self._raw["joint_speed"], "base_height": self._raw["base_height"],
                "contact_force": float(force), "base_speed": self._raw["base_speed"]}

    def _camera_target(self) -> list[float]:
        return [self._x, 0.0, 0.3]  # follows the robot along x
