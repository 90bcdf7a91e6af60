"""Fleet specs: N robot instances from a YAML list of entries, with listed or seeded-sampled variation.

One entry per group of robots (a YAML file holds ``{seed: 0, robots: [...]}`` or just the list)::

    - model: kuka_iiwa            # required: a robot model (`fleet tasks` lists them)
      id: kuka                    # id, or id prefix when count > 1 (kuka-0, kuka-1, ...); default: the model
      count: 4                    # default 1
      link_mass_scale: {uniform: [0.8, 1.2]}   # sampled per robot, seeded by the fleet seed
      joint_damping: 0.5                         # listed: the same for every robot of the entry
      motor_strength: {uniform: [0.7, 1.0]}
      joint_gains: {uniform: [0.5, 1.2], reversed: 0.3, failed: 0.05}   # drawn per controlled joint
    - model: kuka_iiwa
      id: kuka-new
      split: test                 # held out: only seen at evaluation ("a new robot of the fleet")
      joint_gains: [1, -1, 1, 1, 0, 1, 1]        # listed: one per controlled joint of the model

``joint_gains`` (:attr:`RobotSpec.joint_gains`: the multiplier, polarity and failure of each joint's motor) is a
list of numbers, one per controlled joint, or a sampler drawn independently per joint of the entry's model: the
magnitude uniform in ``[lo, hi]`` (within ``[0, 2]``), negative with probability ``reversed``, 0 (a failed motor)
with probability ``failed`` (both optional, default 0, in ``[0, 1]``). Gains draw from their own stream
(``[seed, entry index, 1]``), so adding them to an entry leaves its other sampled values as they were.

The same spec and seed give the same fleet. Every error names the entry and the key.

Usage::

    fleet = parse_fleet(entries, seed=0)
    fleet.train, fleet.test                         # tuples of RobotSpec
    robot = fleet.train_robot("reach/train/3", seed=0, iteration=7)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fleet.robots import MAX_JOINT_GAIN, ROBOT_MODELS, RobotSpec

VARIATION_KEYS = ("link_mass_scale", "joint_damping", "motor_strength")
ENTRY_KEYS = ("model", "id", "count", "split", *VARIATION_KEYS, "joint_gains")
GAIN_SAMPLER_KEYS = ("uniform", "reversed", "failed")
GAINS_STREAM = 1  # the gains' own child stream of each entry's seed
MAX_COUNT = 10_000


class FleetSpecError(ValueError):
    """A fleet spec that cannot be used; the message names the entry and key."""


@dataclass(frozen=True)
class Fleet:
    """The robots of one run: ``train`` (sampled for training tasks) and ``test`` (held out)."""

    train: tuple[RobotSpec, ...]
    test: tuple[RobotSpec, ...] = ()
    seed: int = 0

    @property
    def robots(self) -> tuple[RobotSpec, ...]:
        """Every robot, train first."""
        return self.train + self.test

    @property
    def models(self) -> tuple[str, ...]:
        """Distinct robot models, in first-seen order."""
        return tuple(dict.fromkeys(r.model for r in self.robots))

    def train_robot(self, task_id: str, seed: int, iteration: int) -> RobotSpec:
        """The train robot paired with ``task_id`` at ``iteration``: a seeded draw, the same for the
        support and query phases of that iteration and on resume (no sampler state to keep)."""
        key = [self.seed, seed & 0xFFFFFFFF, iteration & 0xFFFFFFFF, zlib.crc32(task_id.encode())]
        return self.train[int(np.random.SeedSequence(key).generate_state(1)[0]) % len(self.train)]

    def eval_robots(self, count: int) -> list[RobotSpec]:
        """Robots for ``count`` held-out tasks: spread in turn over the test robots, or over all robots
        when none is held out."""
        pool = self.test or self.train
        return [pool[i % len(pool)] for i in range(count)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (``fleet.json`` in the MLflow run)."""
        return {"seed": self.seed, "train": [r.to_dict() for r in self.train], "test": [r.to_dict() for r in self.test]}


def check_fleet_families(families: Sequence[str], fleet: Fleet, horizon: int) -> dict[str, Any]:
    """Check every family runs on every robot model of ``fleet`` and all give the same spaces.

    Robot kinds are checked first (cheap); then one env per (family, model) is built and its spaces
    compared when there is more than one such pair or a plugin (whose spaces are unknown until built).
    Returns the spaces of the first pair (``{"observation": Box, "action": Box}``) or ``{}`` when no env
    was built. Raises ``ValueError`` naming the family, robot model and space.
    """
    from fleet.robots import get_robot_model
    from fleet.tasks import get_family

    geared = [r.robot_id for r in fleet.robots if r.joint_gains]
    for name in families:
        if geared and getattr(get_family(name), "action_mode", None) == "ee":
            raise ValueError(f"task family {name!r} acts in end-effector space (IK), where joint gains do not "
                             f"apply, but robots {geared[:3]} have joint_gains; use a joint-mode family "
                             f"(e.g. {name}_joint or robot_reach)")
        kinds = getattr(get_family(name), "robot_kinds", None)
        for model in fleet.models:
            kind = get_robot_model(model).kind
            if kinds is not None and kind not in kinds:
                raise ValueError(f"task family {name!r} supports robot kinds {tuple(kinds)}, but the fleet has "
                                 f"robot model {model!r} of kind {kind!r}")
    pairs = [(name, model) for name in families for model in fleet.models]
    if len(pairs) == 1 and ":" not in pairs[0][0]:
        return {}
    first = None
    for name, model in pairs:
        spaces = _spaces_of(name, model, horizon)
        if first is None:
            first = (name, model, spaces)
            continue
        for which in ("observation", "action"):
            mine, theirs = spaces[which], first[2][which]
            bounds_equal = np.array_equal(mine.low, theirs.low) and np.array_equal(mine.high, theirs.high)
            same = mine.shape == theirs.shape and (which == "observation" or bounds_equal)
            if not same:
                raise ValueError(f"all robots and families of a run must share spaces: the {which} space of family "
                                 f"{name!r} on robot model {model!r} is {_describe(mine)}, but family {first[0]!r} "
                                 f"on robot model {first[1]!r} gives {_describe(theirs)}")
    return first[2] if first else {}


def _describe(space: Any) -> str:
    if space.shape == (len(space.low),) and len(space.low) <= 6:
        return f"Box(shape={space.shape}, low={space.low.tolist()}, high={space.high.tolist()})"
    return f"Box(shape={space.shape})"


_SPACES: dict[tuple[str, str, int], dict[str, Any]] = {}


def _spaces_of(family: str, model: str, horizon: int) -> dict[str, Any]:
    """Build one env (guarded, as workers do) and return its spaces; cached per process."""
    key = (family, model, horizon)
    if key not in _SPACES:
        import fleet
        from fleet.plugins import PluginError

        try:
            env = fleet.make_env(family, RobotSpec(robot_id="spaces-check", model=model), horizon)
        except PluginError:
            raise
        except Exception as exc:
            raise ValueError(f"task family {family!r} could not build an env for robot model {model!r}: "
                             f"{type(exc).__name__}: {exc}") from None
        try:
            _SPACES[key] = {"observation": env.observation_space, "action": env.action_space}
        finally:
            env.close()
    return _SPACES[key]


def single_robot_fleet(model: str, robot_id: str) -> Fleet:
    """The one-robot shorthand (``fleet.robot`` / ``fleet.robot_id``)."""
    return Fleet(train=(RobotSpec(robot_id=robot_id, model=model),))


def load_fleet_file(path: str | Path, seed: int | None = None) -> Fleet:
    """Read a fleet YAML file (a list of entries, or ``{seed: N, robots: [...]}``) and build the fleet.

    ``seed`` (the run config's ``fleet.fleet_seed``) wins over the file's own ``seed``.
    """
    path = Path(path)
    if not path.is_file():
        raise FleetSpecError(f"fleet file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FleetSpecError(f"fleet file {str(path)!r} is not valid YAML: {exc}") from None
    file_seed = 0
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"seed", "robots"})
        if unknown or "robots" not in data:
            raise FleetSpecError(f"fleet file {str(path)!r}: expected keys 'robots' (and optionally 'seed'), "
                                 f"got {sorted(data)}")
        file_seed, data = data.get("seed", 0), data["robots"]
    return parse_fleet(data, file_seed if seed is None else seed, source=f"fleet file {str(path)!r}")


def parse_fleet(entries: Any, seed: int = 0, source: str = "fleet.robots") -> Fleet:
    """Validate the entries strictly and build the fleet (seeded per entry, so entries are independent)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FleetSpecError(f"{source}: the fleet seed must be a non-negative int, got {seed!r}")
    if not isinstance(entries, list) or not entries:
        raise FleetSpecError(f"{source}: expected a non-empty list of robot entries, got {entries!r}")
    train: list[RobotSpec] = []
    test: list[RobotSpec] = []
    for index, entry in enumerate(entries):
        rngs = np.random.default_rng([seed, index]), np.random.default_rng([seed, index, GAINS_STREAM])
        split, robots = _build_entry(entry, f"{source}[{index}]", *rngs)
        (test if split == "test" else train).extend(robots)
    ids = [r.robot_id for r in train + test]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise FleetSpecError(f"{source}: robot ids must be unique; repeated: {duplicates} (give entries distinct ids)")
    if not train:
        raise FleetSpecError(f"{source}: every entry has split: test; at least one robot must be for training")
    return Fleet(train=tuple(train), test=tuple(test), seed=seed)


def _build_entry(entry: Any, where: str, rng: np.random.Generator,
                 gains_rng: np.random.Generator) -> tuple[str, list[RobotSpec]]:
    if not isinstance(entry, dict):
        raise FleetSpecError(f"{where}: expected a mapping with keys {list(ENTRY_KEYS)}, got {entry!r}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise FleetSpecError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(ENTRY_KEYS)}")
    model = entry.get("model")
    if model not in ROBOT_MODELS:
        raise FleetSpecError(f"{where}.model: unknown robot model {model!r}; known: {', '.join(sorted(ROBOT_MODELS))}")
    count = entry.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise FleetSpecError(f"{where}.count: must be an int in [1, {MAX_COUNT}], got {count!r}")
    split = entry.get("split", "train")
    if split not in ("train", "test"):
        raise FleetSpecError(f"{where}.split: must be 'train' or 'test', got {split!r}")
    prefix = entry.get("id", model)
    if not isinstance(prefix, str) or not prefix:
        raise FleetSpecError(f"{where}.id: must be a non-empty string, got {prefix!r}")
    samplers = {key: _sampler(entry[key], f"{where}.{key}", key) for key in VARIATION_KEYS if key in entry}
    if "joint_gains" in entry:
        draw_gains = _gains_sampler(entry["joint_gains"], f"{where}.joint_gains", model, prefix)
    robots = []
    for i in range(count):
        values: dict[str, Any] = {key: draw(rng) for key, draw in samplers.items()}
        if "joint_gains" in entry:
            values["joint_gains"] = draw_gains(gains_rng)
        robot_id = prefix if count == 1 else f"{prefix}-{i}"
        try:
            robots.append(RobotSpec(robot_id=robot_id, model=model, **values))
        except ValueError as exc:
            raise FleetSpecError(f"{where}: {exc}") from None
    return split, robots


def _sampler(value: Any, where: str, key: str):
    """A function rng -> value for a listed number or ``{uniform: [low, high]}``, bounds checked now."""
    if isinstance(value, dict):
        if set(value) != {"uniform"}:
            raise FleetSpecError(f"{where}: expected a number or {{uniform: [low, high]}}, got {value!r}")
        bounds = value["uniform"]
        if (not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2
                or not all(_is_number(b) for b in bounds)):
            raise FleetSpecError(f"{where}.uniform: expected [low, high] (two numbers), got {bounds!r}")
        low, high = float(bounds[0]), float(bounds[1])
        if low > high:
            raise FleetSpecError(f"{where}.uniform: low must be <= high, got [{low:g}, {high:g}]")
        for bound in (low, high):
            _check_value(bound, where, key)
        return lambda rng: float(rng.uniform(low, high))
    if not _is_number(value):
        raise FleetSpecError(f"{where}: expected a number or {{uniform: [low, high]}}, got {value!r}")
    _check_value(float(value), where, key)
    return lambda rng: float(value)


def _check_value(value: float, where: str, key: str) -> None:
    try:
        RobotSpec(**{key: value})
    except ValueError as exc:
        raise FleetSpecError(f"{where}: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _gains_sampler(value: Any, where: str, model: str, robot_id: str):
    """A function rng -> joint gains (one per controlled joint of ``model``) for a listed vector or
    ``{uniform: [lo, hi], reversed: p, failed: q}``; every bound checked now."""
    joints = ROBOT_MODELS[model].num_joints
    if isinstance(value, list):
        gains = tuple(value)
        try:
            RobotSpec(robot_id=robot_id, model=model, joint_gains=gains)
        except ValueError as exc:
            raise FleetSpecError(f"{where}: {exc}") from None
        return lambda rng: gains
    if not isinstance(value, dict) or "uniform" not in value or not set(value) <= set(GAIN_SAMPLER_KEYS):
        raise FleetSpecError(f"{where}: expected a list of {joints} numbers (one per joint of {model!r}) or "
                             f"{{uniform: [lo, hi], reversed: p, failed: q}}, got {value!r}")
    bounds = value["uniform"]
    if (not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2
            or not all(_is_number(b) for b in bounds)):
        raise FleetSpecError(f"{where}.uniform: expected [lo, hi] (two numbers), got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    if not 0.0 <= low <= high <= MAX_JOINT_GAIN:
        raise FleetSpecError(f"{where}.uniform: the gain magnitude needs 0 <= lo <= hi <= {MAX_JOINT_GAIN:g}, "
                             f"got [{low:g}, {high:g}]")
    p_reversed, p_failed = (_probability(value.get(key, 0.0), f"{where}.{key}") for key in ("reversed", "failed"))

    def draw(rng: np.random.Generator) -> tuple[float, ...]:
        # All three draws every time, so the stream does not depend on p and q being 0.
        magnitude = rng.uniform(low, high, size=joints)
        sign = np.where(rng.random(joints) < p_reversed, -1.0, 1.0)
        alive = rng.random(joints) >= p_failed
        return tuple(float(g) for g in np.where(alive, magnitude * sign, 0.0))  # +0.0, never -0.0

    return draw


def _probability(value: Any, where: str) -> float:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise FleetSpecError(f"{where}: expected a probability in [0, 1], got {value!r}")
    return float(value)
