"""Robot types (from ``pybullet_data``) and the per-robot variation that makes a fleet.

A :class:`RobotModel` describes a kind of arm; a :class:`RobotSpec` is one member of the fleet: a model
plus physical variation (heavier links, stiffer joints, weaker motors, per-joint gains and polarity), so one
policy must adapt to each robot as well as to each task.

:data:`ROBOT_PARAMS` names the privileged parameters a learner may be told (an "oracle" policy) and
:func:`robot_vector` turns a spec into their values, normalised the same way for every fleet (so a vector
means the same thing in every run).

Usage::

    spec = RobotSpec(robot_id="kuka-3", link_mass_scale=1.2, motor_strength=0.8)
    model = get_robot_model(spec.model)
    robot_vector(spec, ["link_mass_scale", "joint_gains"])   # 1 + MAX_JOINTS floats
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleet.errors import UnknownNameError


@dataclass(frozen=True)
class RobotModel:
    """A robot type loadable from ``pybullet_data``.

    Attributes:
        name: Registry key, e.g. ``"kuka_iiwa"``.
        urdf: URDF path relative to ``pybullet_data.getDataPath()``.
        ee_link: Index of the end-effector link.
        home: Home joint positions, one per controlled joint (end effector pointing down, centred in
            the reach workspace).
        description: One line for humans.
        kind: ``"arm"`` (fixed base, end-effector tasks), ``"quadruped"`` or ``"planar"`` (locomotion).
        loader: ``"urdf"`` or ``"mjcf"`` (how ``urdf`` is loaded).
        held_joints: ``(joint index, position)`` pairs held still by the motors and never controlled
            (the panda's fingers, closed); they are not among the controlled ``joints``.
        joints: Indices of the controlled joints, one per ``home`` entry, for models whose controlled joints
            are not ``0..num_joints-1`` (legged robots: root, fixed and toe joints sit in between).
        max_forces: Motor force/torque limit per controlled joint; empty = the file's limits.
        link_masses: ``(link index, kg)`` overrides applied at load, before ``RobotSpec.link_mass_scale``.
        damping_scale: Multiplies ``RobotSpec.joint_damping`` for this model. pybullet applies joint damping
            explicitly, so light links bound the stable value: the fleet's 0..20 range maps onto what the model
            takes (measured under random actions: the cheetah blows up from ~2 N m s/rad, the A1 from ~3, and
            from less with lighter links or a failed motor: the scales leave 4-10x margin at link_mass_scale 1).
    """

    name: str
    urdf: str
    ee_link: int
    home: tuple[float, ...]
    description: str
    kind: str = "arm"
    loader: str = "urdf"
    held_joints: tuple[tuple[int, float], ...] = ()
    joints: tuple[int, ...] = ()
    max_forces: tuple[float, ...] = ()
    link_masses: tuple[tuple[int, float], ...] = ()
    damping_scale: float = 1.0

    @property
    def num_joints(self) -> int:
        """Number of controlled (revolute) joints."""
        return len(self.home)


# The home pose was solved with pybullet IK so that link 6 (the flange) sits at (0.58, 0.0, 0.40) m,
# pointing straight down: the centre of the reach family's goal region, every point of which the arm
# reaches with the flange vertical (closer to the base the elbow, joint 4, hits its limit).
ROBOT_MODELS: dict[str, RobotModel] = {
    "kuka_iiwa": RobotModel(
        name="kuka_iiwa",
        urdf="kuka_iiwa/model.urdf",
        ee_link=6,
        home=(0.0, 0.625, 0.0, -1.526, 0.0, 0.99, 0.0),
        description="KUKA LBR iiwa 7-DoF arm, fixed base at the origin",
    ),
    # Panda: joints 0-6 are the arm, 9-10 the fingers (held closed); the end effector is link 8, the hand
    # frame (at the flange). Its home pose was solved with pybullet IK (20 re-linearised rounds from the
    # guess (0, -0.3, 0, -2.2, 0, 2.0, -2.35)) for the hand at (0.58, 0.0, 0.40) m pointing straight down.
    # From there the IK reaches the whole reach goal region except its far-high corner (0.75, +-0.2, 0.5),
    # which stays ~2.4 cm away (the arm is fully stretched): inside the 5 cm success radius.
    "panda": RobotModel(
        name="panda",
        urdf="franka_panda/panda.urdf",
        ee_link=8,
        home=(0.0, 0.122, 0.0, -1.996, 0.0, 2.118, -2.356),
        description="Franka Emika Panda 7-DoF arm, fingers held closed, fixed base at the origin",
        held_joints=((9, 0.0), (10, 0.0)),
    ),
    # pybullet_data's copy of the MuJoCo cheetah gives each foot an explicit 10 kg inertial (40 kg in all) and
    # pybullet ignores settotalmass: the link masses below restore MuJoCo's (14 kg, geometry-derived, as in the
    # MAML/gym HalfCheetah). Motor limits are the file's gears (ctrlrange ±1). Links: 3 torso, then thigh, shin,
    # foot of the back (5, 7, 9) and front (11, 13, 15) leg. Home is 0 except ffoot, whose range is [-3.1, -0.3].
    "half_cheetah": RobotModel(
        name="half_cheetah",
        urdf="mjcf/half_cheetah.xml",
        ee_link=3,
        home=(0.0, 0.0, 0.0, 0.0, 0.0, -0.3),
        description="MuJoCo half-cheetah (planar: root slides in x, z and pitches), 6 actuated joints",
        kind="planar",
        loader="mjcf",
        joints=(4, 6, 8, 10, 12, 14),
        max_forces=(120.0, 90.0, 60.0, 120.0, 60.0, 30.0),
        link_masses=((3, 6.25), (5, 1.54), (7, 1.59), (9, 1.10), (11, 1.44), (13, 1.20), (15, 0.88)),
        damping_scale=0.01,
    ),
    # Unitree A1 (12.5 kg): stands at a base height of 0.27 m with hips 0, thighs 0.9, calves -1.8 rad and walks
    # with a scripted trot in pybullet (laikago, tried too, is 2x slower to simulate). Legs FR, FL, RR, RL;
    # motor limits are the URDF's (20 N m hip, 55 N m thigh and calf).
    "a1": RobotModel(
        name="a1",
        urdf="a1/a1.urdf",
        ee_link=-1,
        home=(0.0, 0.9, -1.8) * 4,
        description="Unitree A1 quadruped, 12 actuated joints, free-floating base",
        kind="quadruped",
        joints=(1, 3, 4, 6, 8, 9, 11, 13, 14, 16, 18, 19),
        damping_scale=0.025,
    ),
}


def get_robot_model(name: str) -> RobotModel:
    """Return the robot model called ``name``; raise :class:`UnknownNameError` listing known models."""
    try:
        return ROBOT_MODELS[name]
    except (KeyError, TypeError):
        raise UnknownNameError.build("robot model", name, ROBOT_MODELS) from None


# pybullet applies joint damping explicitly; measured here, added damping of 50+ makes the light wrist
# links oscillate at the velocity limit, while 20 stays stable even with link_mass_scale=0.1.
MAX_JOINT_DAMPING = 20.0
# |joint gain| bound: twice the nominal command already saturates most actions; more is a typo, not a robot.
MAX_JOINT_GAIN = 2.0
# The most controlled joints of any model (the A1's 12): joint_gains vectors are padded to this length, so
# one privileged vector layout serves every model.
MAX_JOINTS = 12
# The privileged robot parameters and their lengths in robot_vector.
ROBOT_PARAMS: dict[str, int] = {"link_mass_scale": 1, "joint_damping": 1, "motor_strength": 1,
                                "joint_gains": MAX_JOINTS}


def _check_number(field: str, value: Any, *, positive: bool) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number, > 0 or >= 0 as asked."""
    # bool is an int subclass; a YAML `true` landing here is a config mistake, not a scale of 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"RobotSpec.{field} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"RobotSpec.{field} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise ValueError(f"RobotSpec.{field} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class RobotSpec:
    """One robot of the fleet: a model plus its physical variation.

    Attributes:
        robot_id: Fleet-unique name, stamped on the data this robot produces.
        model: Key into :data:`ROBOT_MODELS`.
        link_mass_scale: Multiplies every link's mass (and inertia, so density stays consistent).
        joint_damping: Added to each joint's URDF damping (pybullet ``jointDamping``), at most
            ``MAX_JOINT_DAMPING``.
        motor_strength: Scales each joint's maximum motor force.
        joint_gains: One multiplier per controlled joint on the action before it reaches the motor: the sign
            is the motor's polarity (negative: wired in reverse, or the encoder's sign convention flipped),
            the magnitude its gain (0: a failed motor). Empty: every gain 1. How each env applies them:
            :mod:`fleet.envs.arm` (joint mode only) and :mod:`fleet.envs.locomotion`.
    """

    robot_id: str = "kuka-0"
    model: str = "kuka_iiwa"
    link_mass_scale: float = 1.0
    joint_damping: float = 0.0
    motor_strength: float = 1.0
    joint_gains: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.robot_id, str) or not self.robot_id:
            raise ValueError(f"RobotSpec.robot_id must be a non-empty string, got {self.robot_id!r}")
        get_robot_model(self.model)  # fail at construction, not when an env is built on a worker
        _check_number("link_mass_scale", self.link_mass_scale, positive=True)
        _check_number("joint_damping", self.joint_damping, positive=False)
        if self.joint_damping > MAX_JOINT_DAMPING:
            raise ValueError(f"RobotSpec.joint_damping must be <= {MAX_JOINT_DAMPING} (larger values make "
                             f"the simulation unstable), got {self.joint_damping!r}")
        _check_number("motor_strength", self.motor_strength, positive=True)
        # A frozen dataclass: the normalised tuple (hashable, lists from JSON/YAML accepted) goes in this way.
        object.__setattr__(self, "joint_gains", _check_gains(self.robot_id, self.model, self.joint_gains))

    @property
    def gains(self) -> tuple[float, ...]:
        """The joint gains, one per controlled joint of the model (all 1.0 when ``joint_gains`` is empty)."""
        return self.joint_gains or (1.0,) * get_robot_model(self.model).num_joints

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain JSON-able data (``joint_gains`` as a list)."""
        data = dataclasses.asdict(self)
        data["joint_gains"] = list(self.joint_gains)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobotSpec:
        """Build a spec from :meth:`to_dict` output; unknown keys are errors (a typo must not pass)."""
        if not isinstance(data, dict):
            raise ValueError(f"RobotSpec.from_dict expects a dict, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown RobotSpec key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}"
            )
        return cls(**data)


def _check_gains(robot_id: str, model: str, gains: Any) -> tuple[float, ...]:
    """``gains`` as a tuple of floats; ``ValueError`` unless finite, within ``±MAX_JOINT_GAIN`` and one per joint."""
    if not isinstance(gains, (tuple, list)):
        raise ValueError(f"RobotSpec.joint_gains must be a list of numbers, got {gains!r}")
    for gain in gains:
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain):
            raise ValueError(f"RobotSpec.joint_gains must hold finite numbers, got {gain!r} in {list(gains)!r}")
        if abs(gain) > MAX_JOINT_GAIN:
            bound = f"{MAX_JOINT_GAIN:g}"
            raise ValueError(f"RobotSpec.joint_gains must be in [-{bound}, {bound}], got {gain!r}")
    expected = get_robot_model(model).num_joints
    if gains and len(gains) != expected:
        raise ValueError(f"robot {robot_id!r}: joint_gains has {len(gains)} entries, but model {model!r} has "
                         f"{expected} controlled joints (expected {expected}, or none for all 1.0)")
    return tuple(float(g) for g in gains)


def check_robot_params(keys: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``keys`` is a non-empty sequence of distinct :data:`ROBOT_PARAMS` names."""
    if isinstance(keys, str) or not isinstance(keys, Sequence) or not keys:
        raise ValueError(f"robot params must be a non-empty list of names from {list(ROBOT_PARAMS)}, got {keys!r}")
    for key in keys:
        if key not in ROBOT_PARAMS:
            raise ValueError(f"unknown robot param {key!r}; known: {', '.join(ROBOT_PARAMS)}")
    repeated = sorted({k for k in keys if list(keys).count(k) > 1})
    if repeated:
        raise ValueError(f"robot params must be distinct; repeated: {repeated}")


def robot_param_dim(keys: Sequence[str]) -> int:
    """Length of :func:`robot_vector` for ``keys`` (checked as :func:`check_robot_params` does)."""
    check_robot_params(keys)
    return sum(ROBOT_PARAMS[k] for k in keys)


def robot_vector(spec: RobotSpec, keys: Sequence[str]) -> tuple[float, ...]:
    """The privileged parameters ``keys`` of ``spec``, in that order, normalised independently of the fleet.

    ``link_mass_scale - 1``, ``joint_damping / MAX_JOINT_DAMPING``, ``motor_strength - 1`` (0 for the nominal
    robot, so an oracle input is ~0-centred without fleet statistics) and ``joint_gains`` padded with 1.0 to
    :data:`MAX_JOINTS` (a missing joint behaves like a nominal one).
    """
    check_robot_params(keys)
    values: list[float] = []
    for key in keys:
        if key == "joint_gains":
            gains = spec.gains
            values += [*gains, *[1.0] * (MAX_JOINTS - len(gains))]
        elif key == "joint_damping":
            values.append(spec.joint_damping / MAX_JOINT_DAMPING)
        else:
            values.append(getattr(spec, key) - 1.0)
    return tuple(float(v) for v in values)


def same_body(a: RobotSpec, b: RobotSpec) -> bool:
    """Whether two robots differ only in id and ``joint_gains``: the same simulated body, which an env built for
    one can serve the other after :meth:`fleet.envs.sim.SimEnv.retarget` (no reload: a fleet of many robots that
    differ only in their motors shares each worker's envs)."""
    return dataclasses.replace(a, robot_id=b.robot_id, joint_gains=b.joint_gains) == b
