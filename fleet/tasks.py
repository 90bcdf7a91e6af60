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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from fleet.errors import UnknownNameError
from fleet.families import BUILTIN_FAMILIES

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
    rejects test tasks too close to any train task (exactly equal params are always rejected).
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


FAMILIES: dict[str, TaskFamily] = dict(BUILTIN_FAMILIES)


def get_family(name: str) -> TaskFamily:
    """Return the task family called ``name``; raise :class:`UnknownNameError` listing known families."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UnknownNameError.build("task family", name, FAMILIES) from None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


class TaskDistribution:
    """Fixed, seeded, disjoint train/test task sets of one family plus a checkpointable sampler.

    Train tasks, test tasks and the sampler each draw from their own child of
    ``np.random.SeedSequence(seed)``, so the task sets depend only on ``(family, counts, seed)`` and
    sampling never shifts them.

    Usage::

        dist = TaskDistribution("reach", num_train=100, num_test=20, seed=0)
        batch = dist.sample(20)                  # list[Task] from the train split
        state = dist.get_state()                 # JSON-able; store it in the checkpoint
        dist.set_state(state)                    # later: the same next samples
    """

    def __init__(self, family: str, num_train: int, num_test: int, seed: int, sampler_seed: int | None = None) -> None:
        self.family = get_family(family)
        for name, value, minimum in (("num_train", num_train, 1), ("num_test", num_test, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.num_train, self.num_test, self.seed = num_train, num_test, seed
        train_seq, test_seq, sampler_seq = np.random.SeedSequence(seed).spawn(3)
        train_rng = np.random.default_rng(train_seq)
        train_params = [self.family.sample_params(train_rng) for _ in range(num_train)]
        test_params = self._draw_disjoint(np.random.default_rng(test_seq), num_test, train_params)
        self.train_tasks: tuple[Task, ...] = self._make_tasks("train", train_params)
        self.test_tasks: tuple[Task, ...] = self._make_tasks("test", test_params)
        # The split depends on `seed` only; `sampler_seed` varies the sampling order (training seeds).
        self._rng = np.random.default_rng(sampler_seq if sampler_seed is None else [seed, sampler_seed])

    def _draw_disjoint(
        self, rng: np.random.Generator, count: int, train_params: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Draw ``count`` params, rejecting any equal (or ``too_close``) to a train task."""
        too_close = getattr(self.family, "too_close", None)

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
                    f"could not draw {count} {self.family.name} test tasks disjoint from "
                    f"{len(train_params)} train tasks in {max_attempts} attempts; use fewer tasks"
                )
            params = self.family.sample_params(rng)
            if not conflicts(params):
                drawn.append(params)
        return drawn

    def _make_tasks(self, split: str, params: list[dict[str, Any]]) -> tuple[Task, ...]:
        name = self.family.name
        return tuple(Task(family=name, task_id=f"{name}/{split}/{i}", params=p) for i, p in enumerate(params))

    def tasks(self, split: str) -> tuple[Task, ...]:
        """All tasks of ``split`` (``"train"`` or ``"test"``), in id order."""
        _check_split(split)
        return self.train_tasks if split == "train" else self.test_tasks

    def sample(self, n: int, split: str = "train") -> list[Task]:
        """Draw ``n`` tasks uniformly from ``split``: distinct if ``n`` <= pool size, else with repeats."""
        pool = self.tasks(split)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if n == 0:
            return []
        if not pool:
            raise ValueError(f"cannot sample from the empty {split!r} split")
        indices = self._rng.choice(len(pool), size=n, replace=n > len(pool))
        return [pool[i] for i in indices.tolist()]

    def get_state(self) -> dict[str, Any]:
        """Return the sampler state as plain JSON-able data (with what identifies the task sets)."""
        return {
            "family": self.family.name,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "seed": self.seed,
            "rng": copy.deepcopy(self._rng.bit_generator.state),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state` output; refuses a state taken from a different distribution."""
        mine = {"family": self.family.name, "num_train": self.num_train, "num_test": self.num_test,
                "seed": self.seed}
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise ValueError(f"state belongs to task distribution {theirs}, not {mine}")
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
