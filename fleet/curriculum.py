"""Curriculum hook: sampling weights over the train tasks from recent per-task results.

A curriculum is named in a config as ``fleet.curriculum: "module:object"``: a callable (a function, or
an object with ``__call__``; a class is instantiated without arguments) with the signature::

    def my_curriculum(iteration: int, tasks: Sequence[Task], stats: Mapping[str, TaskStats]) -> Sequence[float]

``tasks`` are the train tasks in id order; ``stats`` maps ``task_id`` to the :class:`TaskStats` of the
tasks sampled so far (unseen tasks are absent). It returns one non-negative weight per task (any
scale, at least one positive); the meta-batch is drawn with probability proportional to
``weight x family weight / tasks of that family``. Without a curriculum every task is equally likely
within its family. ``examples/curriculum.py`` holds a worked one (favour tasks with low success).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RECENT = 5  # results kept per task for the "recent" means


@dataclass(frozen=True)
class TaskStats:
    """What a curriculum sees about one train task.

    Attributes:
        visits: Times the task was in a meta-batch.
        last_iteration: Iteration of its most recent visit.
        mean_return: Mean episode return over its last ``RECENT`` visits (support and query).
        mean_success: Mean success rate over the same visits.
    """

    visits: int
    last_iteration: int
    mean_return: float
    mean_success: float


class TaskStatsLog:
    """Per-task recent results, as plain checkpointable data."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}

    def record(self, task_id: str, iteration: int, mean_return: float, success: float) -> None:
        """Add one visit's result."""
        entry = self._data.setdefault(task_id, {"visits": 0, "last_iteration": -1, "returns": [], "success": []})
        if entry["last_iteration"] != iteration:
            entry["visits"] += 1
        entry["last_iteration"] = iteration
        entry["returns"] = [*entry["returns"], float(mean_return)][-RECENT:]
        entry["success"] = [*entry["success"], float(success)][-RECENT:]

    def view(self) -> dict[str, TaskStats]:
        """The stats a curriculum gets."""
        return {task_id: TaskStats(e["visits"], e["last_iteration"], float(np.mean(e["returns"])),
                                   float(np.mean(e["success"]))) for task_id, e in self._data.items()}

    def get_state(self) -> dict[str, Any]:
        return {k: {**v, "returns": list(v["returns"]), "success": list(v["success"])} for k, v in self._data.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._data = {k: {**v, "returns": list(v["returns"]), "success": list(v["success"])} for k, v in state.items()}


def load_curriculum(reference: str) -> Callable[..., Sequence[float]]:
    """Resolve ``"module:object"`` to a curriculum callable; raise ``ValueError`` naming the problem."""
    from fleet.plugins import resolve_object

    obj = resolve_object(reference, what="curriculum")
    if inspect.isclass(obj):
        obj = obj()
    if not callable(obj):
        raise ValueError(f"curriculum {reference!r} is not callable; expected "
                         "f(iteration, tasks, stats) -> weights over tasks")
    return obj


def check_weights(weights: Any, count: int, reference: str) -> np.ndarray:
    """The curriculum's output as a float array of ``count`` finite, non-negative weights, not all 0."""
    try:
        array = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"curriculum {reference!r} returned {type(weights).__name__}, "
                         f"expected {count} numbers") from None
    if array.shape != (count,) or not np.isfinite(array).all() or (array < 0).any() or not array.sum() > 0:
        raise ValueError(f"curriculum {reference!r} must return {count} finite weights >= 0, not all 0 "
                         f"(one per train task); got shape {array.shape}")
    return array
