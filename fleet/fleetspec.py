"""Fleet specs: N robot instances from a YAML list of entries, with listed or seeded-sampled variation.

One entry per group of robots (a YAML file holds ``{seed: 0, robots: [...]}`` or just the list)::

    - model: kuka_iiwa            # required: a robot model (`fleet tasks` lists them)
      id: kuka                    # id, or id prefix when count > 1 (kuka-0, kuka-1, ...); default: the model
      count: 4                    # default 1
      link_mass_scale: {uniform: [0.8, 1.2]}   # sampled per robot, seeded by the fleet seed
      joint_damping: 0.5                         # listed: the same for every robot of the entry
      motor_strength: {uniform: [0.7, 1.0]}
    - model: kuka_iiwa
      id: kuka-new
      split: test                 # held out: only seen at evaluation ("a new robot of the fleet")

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

from fleet.robots import ROBOT_MODELS, RobotSpec

VARIATION_KEYS = ("link_mass_scale", "joint_damping", "motor_strength")
ENTRY_KEYS = ("model", "id", "count", "split", *VARIATION_KEYS)
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

    for name in families:
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
        split, robots = _build_entry(entry, f"{source}[{index}]", np.random.default_rng([seed, index]))
        (test if split == "test" else train).extend(robots)
    ids = [r.robot_id for r in train + test]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise FleetSpecError(f"{source}: robot ids must be unique; repeated: {duplicates} (give entries distinct ids)")
    if not train:
        raise FleetSpecError(f"{source}: every entry has split: test; at least one robot must be for training")
    return Fleet(train=tuple(train), test=tuple(test), seed=seed)


def _build_entry(entry: Any, where: str, rng: np.random.Generator) -> tuple[str, list[RobotSpec]]:
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
    robots = []
    for i in range(count):
        values = {key: draw(rng) for key, draw in samplers.items()}
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
