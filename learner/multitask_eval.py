"""Per-task evaluation of multi-task learners, and transfer = multi-task minus single-task return.

    >>> multi = evaluate_tasks(mtppo, pool, train_tasks, robot, episodes=10, horizon=50)
    >>> tracker.log_metrics(multi.metrics(), step)          # task/<task_id>/return, .../success
    >>> single = evaluate_tasks(single_task, pool, train_tasks, robot, episodes=10, horizon=50)
    >>> transfer(multi, single)                              # {task_id: return difference}

Negative transfer on a task shows up as a negative difference: sharing one network made that task
worse than training a network for it alone. Each task is evaluated with the learner's own choice
of policy (`weights_for`) and task vector (`context_for`), without adaptation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleet.robots import RobotSpec
from fleet.tasks import Task
from learner.base import MetaLearner
from learner.evaluation import request_seed
from workers.batch import SampleRequest
from workers.pool import WorkerPool

EVAL_PHASE_KEY = 11  # seed key of this evaluation (meta-evaluation uses 7): its own episodes


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
        out = {}
        for task_id, figures in self.by_task().items():
            out[f"{prefix}/{task_id}/return"] = figures["return"]
            out[f"{prefix}/{task_id}/success"] = figures["success"]
        return out

    def to_dict(self) -> dict:
        return {"task_ids": self.task_ids, "returns": self.returns, "successes": self.successes,
                "episodes": self.episodes, "env_steps": self.env_steps}

    @classmethod
    def from_dict(cls, data: dict) -> TaskEvalResult:
        """Inverse of `to_dict` (e.g. a logged `eval/tasks.json` of another run, to compute transfer)."""
        return cls([str(t) for t in data["task_ids"]], [float(r) for r in data["returns"]],
                   [float(s) for s in data["successes"]], int(data["episodes"]), int(data.get("env_steps", 0)))


def evaluate_tasks(
    learner: MetaLearner,
    pool: WorkerPool,
    tasks: Sequence[Task],
    robot: RobotSpec,
    episodes: int = 10,
    horizon: int = 50,
    seed: int = 0,
    version: str = "taskeval",
    deterministic: bool = False,
) -> TaskEvalResult:
    """Each task's mean return/success over `episodes` fresh episodes of the learner's policy for it
    (no adaptation; `deterministic` = mean actions). Seeds depend on (seed, task position) only."""
    if not tasks:
        raise ValueError("evaluate_tasks needs at least one task")
    weights = learner.weights_for(tasks, version)
    requests = [
        SampleRequest(task, robot, w.version, episodes, horizon, request_seed(seed, i, EVAL_PHASE_KEY), "eval",
                      deterministic=deterministic, context=learner.context_for(task),
                      trial_episodes=learner.trial_episodes)
        for i, (task, w) in enumerate(zip(tasks, weights))
    ]
    batches = pool.sample(requests, {w.version: w for w in weights})
    return TaskEvalResult(
        task_ids=[t.task_id for t in tasks],
        returns=[b.mean_return() for b in batches],
        successes=[b.success_rate() for b in batches],
        episodes=episodes,
        env_steps=sum(b.num_steps for b in batches),
    )


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
