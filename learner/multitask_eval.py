"""Per-task evaluation of multi-task learners, and transfer = multi-task minus single-task return.

    >>> protocol = EvalProtocol(train_tasks, robots, episodes=10, horizon=50)
    >>> multi = evaluate_tasks(mtppo, pool, protocol)
    >>> tracker.log_metrics(multi.metrics(), step)          # task/<task_id>/return, .../success
    >>> single = evaluate_tasks(single_task, pool, protocol)
    >>> transfer(multi, single)                              # {task_id: return difference}

Negative transfer on a task shows up as a negative difference: sharing one network made that task
worse than training a network for it alone. Each task is evaluated with the learner's own round-0
policy and task vector (`Learner.adaptation`), without adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from learner.evaluation import EvalProtocol, evaluate, flatten
from learner.interface import Learner
from workers.pool import WorkerPool


@dataclass
class TaskEvalResult:
    """Mean episode return and success rate of each task (same order as `task_ids`)."""

    task_ids: list[str]
    returns: list[float]
    successes: list[float]
    episodes: int
    env_steps: int = 0

    def by_task(self) -> dict[str, dict[str, float]]:
        return {t: {"return": r, "success": s} for t, r, s in zip(self.task_ids, self.returns, self.successes)}

    def metrics(self, prefix: str = "task") -> dict[str, float]:
        """Flat MLflow metrics: `task/<task_id>/return` and `task/<task_id>/success` per task."""
        return flatten(prefix, self.by_task())

    def to_dict(self) -> dict:
        return {"task_ids": self.task_ids, "returns": self.returns, "successes": self.successes,
                "episodes": self.episodes, "env_steps": self.env_steps}

    @classmethod
    def from_dict(cls, data: dict) -> TaskEvalResult:
        """Inverse of `to_dict` (e.g. a logged `eval/tasks.json` of another run, to compute transfer)."""
        return cls([str(t) for t in data["task_ids"]], [float(r) for r in data["returns"]],
                   [float(s) for s in data["successes"]], int(data["episodes"]), int(data.get("env_steps", 0)))


def evaluate_tasks(learner: Learner, pool: WorkerPool, protocol: EvalProtocol) -> TaskEvalResult:
    """Each task's mean return/success over `protocol.episodes` fresh episodes of the learner's round-0
    policy for it (no adaptation; `protocol.deterministic` = mean actions). Seeds depend on (seed, task
    position) only: the "tasks" stream unless the protocol names another."""
    protocol = replace(protocol, steps=(0,), stream=protocol.stream or "tasks")
    result = evaluate(learner, pool, protocol)
    return TaskEvalResult(task_ids=result.task_ids, returns=result.returns[0], successes=result.successes[0],
                          episodes=protocol.episodes, env_steps=result.env_steps)


def transfer(multi_task: TaskEvalResult, single_task: TaskEvalResult) -> dict[str, float]:
    """Per task: multi-task return minus single-task return (negative = negative transfer)."""
    multi, single = multi_task.by_task(), single_task.by_task()
    if set(multi) != set(single):
        missing = sorted(set(multi) ^ set(single))
        raise ValueError(f"transfer compares the same tasks; these are in only one result: {missing}")
    return {task_id: multi[task_id]["return"] - single[task_id]["return"] for task_id in multi_task.task_ids}


def transfer_metrics(per_task: dict[str, float], prefix: str = "transfer") -> dict[str, float]:
    """Flat metrics: `transfer/<task_id>`, their mean and the fraction of tasks with negative transfer."""
    values = np.asarray(list(per_task.values()), np.float64)
    out = {f"{prefix}/{task_id}": float(v) for task_id, v in per_task.items()}
    out[f"{prefix}/mean"] = float(values.mean()) if len(values) else 0.0
    out[f"{prefix}/negative_fraction"] = float((values < 0).mean()) if len(values) else 0.0
    return out
