"""A worked curriculum: sample unsolved tasks more often.

Use it with ``--set fleet.curriculum=examples.curriculum:favour_unsolved`` (or ``curriculum:`` in the
``fleet`` section of a config). metafleet calls it before each meta-batch is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

WARMUP = 5  # iterations of uniform sampling before results are trusted
FLOOR = 0.1  # a solved task keeps a little weight, so it is not forgotten


def favour_unsolved(iteration: int, tasks: Sequence[Any], stats: Mapping[str, Any]) -> list[float]:
    """Weight 1 for unseen tasks; else ``FLOOR + (1 - recent success)``: unsolved tasks come back sooner."""
    if iteration < WARMUP:
        return [1.0] * len(tasks)
    weights = []
    for task in tasks:
        seen = stats.get(task.task_id)
        weights.append(1.0 if seen is None else FLOOR + (1.0 - seen.mean_success))
    return weights
