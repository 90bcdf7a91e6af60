"""Tasks, task families and seeded train/test task distributions.

A :class:`TaskFamily` knows how to draw task parameters and how to build an env that accepts them; a
:class:`Task` is one drawn parameter set with a stable id; a :class:`TaskDistribution` fixes disjoint
train and test task sets for a seed and samples meta-batches from them with a checkpointable RNG.

Usage::

    dist = TaskDistribution("reach", num_train=100, num_test=20, seed=0)
    for task in dist.sample(20, split="train"):
        env = get_family(task.family).make_env(RobotSpec(), horizon=50)
        env.set_task(task.params)
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from fleet.curriculum import TaskStatsLog, check_weights, load_curriculum
from fleet.errors import UnknownNameError
from fleet.families import BUILTIN_FAMILIES
from fleet.plugins import is_reference, load_plugin

if TYPE_CHECKING:
    import gymnasium

    from fleet.robots import RobotSpec

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Task:
    """One task: a family name, an id unique within its distribution, and JSON-able params.

    Attributes:
        family: Task family name, e.g. ``"reach"``.
        task_id: ``"<family>/<split>/<index>"``, e.g. ``"reach/train/17"``.
        params: Plain-python parameters the family's env accepts in ``set_task``; treat as read-only
            (tasks are shared, and a dict keeps them JSON-able and picklable).
    """

    family: str
    task_id: str
    params: dict[str, Any]

    def __hash__(self) -> int:
        # The generated hash would fail on the dict; (family, task_id) is consistent with __eq__.
        return hash((self.family, self.task_id))

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-able data (params deep-copied, so callers cannot mutate this task)."""
        return {"family": self.family, "task_id": self.task_id, "params": copy.deepcopy(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """Inverse of :meth:`to_dict`; missing or unknown keys are errors."""
        expected = {"family", "task_id", "params"}
        if not isinstance(data, dict) or set(data) != expected:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"Task.from_dict expects exactly keys {sorted(expected)}, got {keys}")
        return cls(family=data["family"], task_id=data["task_id"], params=copy.deepcopy(data["params"]))


@runtime_checkable
class TaskFamily(Protocol):
    """What a task family provides. Implement these five members to add your own family.

    ``make_env`` returns a gymnasium env that also has ``set_task(params: dict)``; callers do::

        env = family.make_env(robot, horizon=50)
        env.set_task(family.sample_params(rng))
        obs, info = env.reset(seed=0)

    A family may also define ``too_close(a: dict, b: dict) -> bool``; :class:`TaskDistribution` then
    rejects test tasks too close to any train task (exactly equal params are always rejected), and
    ``robot_kinds: tuple[str, ...]``, the :class:`~fleet.robots.RobotModel` kinds it supports (absent or
    None: any), ``success_at`` (``"last"``, the default, or ``"any"``: see :func:`success_rule`) and
    ``fixed_tasks(split) -> list[dict] | None`` (a fixed task list replacing the drawn split). External
    families need not implement this protocol: see :mod:`fleet.plugins`.
    """

    name: str
    description: str
    param_names: tuple[str, ...]

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one task's params (plain, JSON-able python) using only ``rng``."""
        ...

    def make_env(
        self, robot: RobotSpec, horizon: int, render_mode: str | None = None
    ) -> gymnasium.Env:
        """Build an env for ``robot`` that truncates after ``horizon`` steps and has ``set_task``."""
        ...


SUCCESS_RULES = ("last", "any")


def success_rule(name: str) -> str:
    """When an episode of family ``name`` counts as a success: ``info["success"]`` at its ``"last"`` step
    (the built-in families, and any family that does not say) or at ``"any"`` step (``family.success_at``).

    Names fleet does not know (test doubles served by their own env factory) count the last step.
    """
    try:
        family = get_family(name)
    except UnknownNameError:
        return "last"
    return getattr(family, "success_at", "last")


FAMILIES: dict[str, TaskFamily] = dict(BUILTIN_FAMILIES)
_PLUGINS: dict[str, TaskFamily] = {}  # "module:object" -> adapted family, loaded once per process


def get_family(name: str) -> TaskFamily:
    """Return the task family called ``name`` (built-in) or referenced by ``"module:object"`` (a plugin).

    Raises :class:`UnknownNameError` listing the known families, or :class:`fleet.plugins.PluginError`.
    """
    if is_reference(name):
        if name not in _PLUGINS:
            _PLUGINS[name] = load_plugin(name)
        return _PLUGINS[name]
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UnknownNameError.build("task family", name, FAMILIES) from None


def family_weights(family: str | Mapping[str, float]) -> dict[str, float]:
    """``"reach"`` -> ``{"reach": 1.0}``; a mapping is checked (known families, weights > 0)."""
    if isinstance(family, str):
        get_family(family)
        return {family: 1.0}
    if not isinstance(family, Mapping) or not family:
        raise ValueError(f"family must be a name or a non-empty mapping of family -> weight, got {family!r}")
    weights = {}
    for name, weight in family.items():
        get_family(name)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise ValueError(f"weight of family {name!r} must be a finite number > 0, got {weight!r}")
        weights[name] = float(weight)
    return weights


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def allocate(total: int, weights: Sequence[float], minimum: int) -> list[int]:
    """Split ``total`` into integer shares proportional to ``weights`` (largest remainder), each >= ``minimum``."""
    shares = np.asarray(weights, np.float64) / sum(weights) * (total - minimum * len(weights))
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: total - minimum * len(weights) - counts.sum()]:
        counts[i] += 1
    return [int(c) + minimum for c in counts]


class TaskDistribution:
    """Fixed, seeded, disjoint train/test task sets of one family or a weighted mixture, plus a
    checkpointable sampler with an optional curriculum.

    For one family, train tasks, test tasks and the sampler each draw from their own child of
    ``np.random.SeedSequence(seed)``, so the task sets depend only on ``(family, counts, seed)`` and
    sampling never shifts them. For a mixture ``{"velocity": 2, "direction": 1}`` the task counts are
    split between families in proportion to the weights (each family gets >= 1 train task, and >= 1 test
    task when ``num_test`` allows), each family draws its own disjoint split from
    ``SeedSequence([seed, crc32(name)])``, and a task is sampled with probability
    ``weight / tasks of its family`` (times the curriculum's weight, if any).

    Usage::

        dist = TaskDistribution("reach", num_train=100, num_test=20, seed=0)
        batch = dist.sample(20)                  # list[Task] from the train split
        dist.observe(batches)                    # per-task results for the curriculum
        state = dist.get_state()                 # JSON-able; store it in the checkpoint
        dist.set_state(state)                    # later: the same next samples
    """

    def __init__(self, family: str | Mapping[str, float], num_train: int, num_test: int, seed: int,
                 sampler_seed: int | None = None, curriculum: str | None = None) -> None:
        self.weights = family_weights(family)
        self.families = {name: get_family(name) for name in self.weights}
        self.family = next(iter(self.families.values()))  # the (first) family; one-family callers use it
        for name, value, minimum in (("num_train", num_train, len(self.weights)), ("num_test", num_test, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.num_train, self.num_test, self.seed = num_train, num_test, seed
        _, _, sampler_seq = np.random.SeedSequence(seed).spawn(3)
        self.train_tasks, self.test_tasks, self._base_p = self._split()
        # The split depends on `seed` only; `sampler_seed` varies the sampling order (training seeds).
        self._rng = np.random.default_rng(sampler_seq if sampler_seed is None else [seed, sampler_seed])
        self.curriculum_name = curriculum
        self._curriculum = load_curriculum(curriculum) if curriculum else None
        self.stats = TaskStatsLog()
        self.draws = 0  # train samples drawn so far = the iteration the next one is for

    @property
    def is_mixture(self) -> bool:
        return len(self.weights) > 1

    def _split(self) -> tuple[tuple[Task, ...], tuple[Task, ...], np.ndarray | None]:
        """All families' train and test tasks, and per-train-task base probabilities (None = uniform)."""
        if not self.is_mixture:
            train_seq, test_seq, _ = np.random.SeedSequence(self.seed).spawn(3)
            train, test = self._split_family(self.family, self.num_train, self.num_test, train_seq, test_seq)
            return train, test, None
        names, weights = list(self.weights), list(self.weights.values())
        trains = allocate(self.num_train, weights, 1)
        tests = allocate(self.num_test, weights, 1 if self.num_test >= len(names) else 0)
        train: list[Task] = []
        test: list[Task] = []
        probs: list[float] = []
        for name, weight, n_train, n_test in zip(names, weights, trains, tests):
            train_seq, test_seq = np.random.SeedSequence([self.seed, zlib.crc32(name.encode())]).spawn(2)
            family_train, family_test = self._split_family(self.families[name], n_train, n_test, train_seq, test_seq)
            train += family_train
            test += family_test
            probs += [weight / n_train] * n_train
        return tuple(train), tuple(test), np.asarray(probs) / sum(probs)

    def _split_family(self, family: TaskFamily, num_train: int, num_test: int, train_seq: np.random.SeedSequence,
                      test_seq: np.random.SeedSequence) -> tuple[tuple[Task, ...], tuple[Task, ...]]:
        fixed = getattr(family, "fixed_tasks", None)
        fixed_train, fixed_test = (fixed("train"), fixed("test")) if fixed is not None else (None, None)
        if fixed_train is not None:  # the family's own list: no draws, never more tasks than it holds
            train_params = fixed_train[:num_train]
        else:
            train_rng = np.random.default_rng(train_seq)
            train_params = [family.sample_params(train_rng) for _ in range(num_train)]
        if fixed_test is not None:
            test_params = fixed_test[:num_test]
        else:
            test_params = self._draw_disjoint(family, np.random.default_rng(test_seq), num_test, train_params)
        return self._make_tasks(family, "train", train_params), self._make_tasks(family, "test", test_params)

    @staticmethod
    def _draw_disjoint(family: TaskFamily, rng: np.random.Generator, count: int,
                       train_params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Draw ``count`` params, rejecting any equal (or ``too_close``) to a train task."""
        too_close = getattr(family, "too_close", None)

        def conflicts(params: dict[str, Any]) -> bool:
            return any(params == other or (too_close is not None and too_close(params, other))
                       for other in train_params)

        drawn: list[dict[str, Any]] = []
        attempts = 0
        max_attempts = 100 * count + 1000  # only a pathologically small task space gets near this
        while len(drawn) < count:
            attempts += 1
            if attempts > max_attempts:
                raise ValueError(
                    f"could not draw {count} {family.name} test tasks disjoint from "
                    f"{len(train_params)} train tasks in {max_attempts} attempts; use fewer tasks"
                )
            params = family.sample_params(rng)
            if not conflicts(params):
                drawn.append(params)
        return drawn

    @staticmethod
    def _make_tasks(family: TaskFamily, split: str, params: list[dict[str, Any]]) -> tuple[Task, ...]:
        name = family.name
        return tuple(Task(family=name, task_id=f"{name}/{split}/{i}", params=p) for i, p in enumerate(params))

    def tasks(self, split: str) -> tuple[Task, ...]:
        """All tasks of ``split`` (``"train"`` or ``"test"``), in id order (family by family)."""
        _check_split(split)
        return self.train_tasks if split == "train" else self.test_tasks

    def sample(self, n: int, split: str = "train") -> list[Task]:
        """Draw ``n`` tasks from ``split``: distinct if ``n`` <= the tasks that can be drawn, else with repeats.

        Train draws follow the family weights and the curriculum; test draws are uniform.
        """
        pool = self.tasks(split)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if n == 0:
            return []
        if not pool:
            raise ValueError(f"cannot sample from the empty {split!r} split")
        p = self.train_probabilities() if split == "train" else None
        if split == "train":
            self.draws += 1
        if p is None:
            indices = self._rng.choice(len(pool), size=n, replace=n > len(pool))
        else:
            indices = self._rng.choice(len(pool), size=n, replace=n > np.count_nonzero(p), p=p)
        return [pool[i] for i in indices.tolist()]

    def train_probabilities(self) -> np.ndarray | None:
        """The next train draw's probability per train task (None: uniform)."""
        p = self._base_p
        if self._curriculum is None:
            return p
        raw = self._curriculum(self.draws, self.train_tasks, self.stats.view())
        weights = check_weights(raw, len(self.train_tasks), str(self.curriculum_name))
        p = weights if p is None else p * weights
        if not p.sum() > 0:
            raise ValueError(f"curriculum {self.curriculum_name!r} gave weight 0 to every task of every family")
        return p / p.sum()

    def observe(self, batches: Sequence[Any]) -> None:
        """Record results of the last train draw (``Batch``-like: ``task``, ``mean_return()``, ``success_rate()``)."""
        for batch in batches:
            self.stats.record(batch.task.task_id, self.draws - 1, batch.mean_return(), batch.success_rate())

    def describe(self) -> dict[str, Any]:
        """What identifies the task sets: family (name or weights), counts, seed."""
        family: Any = self.family.name if not self.is_mixture else dict(self.weights)
        return {"family": family, "num_train": self.num_train, "num_test": self.num_test, "seed": self.seed}

    def get_state(self) -> dict[str, Any]:
        """Return the sampler state as plain JSON-able data (with what identifies the task sets)."""
        return {**self.describe(), "rng": copy.deepcopy(self._rng.bit_generator.state), "draws": self.draws,
                "curriculum": self.curriculum_name, "stats": self.stats.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state` output; refuses a state taken from a different distribution."""
        mine = self.describe()
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise ValueError(f"state belongs to task distribution {theirs}, not {mine}")
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.draws = int(state.get("draws", 0))
        self.stats.set_state(state.get("stats", {}))
