"""PEARL's tests drive the learner interface directly on a pool (no MLflow, no builder): the same
`learner.sampling.drive` the loop uses, with the loop's seed streams; plus a small train/evaluate pair."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from fleet.robots import RobotSpec
from fleet.tasks import Task
from learner.interface import Collect, Learner, Plan
from learner.sampling import Phase, requests_for
from learner.sampling import drive as drive_plan
from learner.seeds import eval_seed, request_seed


def drive(plan: Plan, pool, robot: RobotSpec, horizon: int, seed: int, scope: int,
          evaluation: bool = False) -> list[Phase]:
    """Run a plan to the end on `pool`, every task on `robot`; returns [(Collect, batches)] in order."""
    def requests(collect: Collect):
        def seed_of(i: int) -> int:
            if evaluation:
                return eval_seed(seed, collect.stream, collect.measures[0], i)
            return request_seed(seed, collect.stream, scope, i)
        return requests_for(collect, [robot] * len(collect.tasks), horizon, seed_of)

    return drive_plan(plan, pool, requests)


def train(learner: Learner, pool, train_tasks: Sequence[Task], robot: RobotSpec, horizon: int, iterations: int,
          meta_batch: int, seed: int = 0, episodes: int = 1) -> dict:
    """`iterations` of collect + update on `meta_batch` training tasks drawn per iteration."""
    rng = np.random.default_rng(seed)
    env_steps, start = 0, time.perf_counter()
    for iteration in range(iterations):
        tasks = [train_tasks[i] for i in rng.choice(len(train_tasks), meta_batch, replace=False)]
        for _, batches in drive(learner.collect(tasks, iteration, episodes), pool, robot, horizon, seed, iteration):
            env_steps += sum(b.num_steps for b in batches)
        learner.update()
    return {"env_steps": env_steps, "seconds": time.perf_counter() - start}


def evaluate(learner: Learner, pool, tasks: Sequence[Task], robot: RobotSpec, horizon: int, rounds: int,
             seed: int = 1, version: str = "eval", episodes: int = 1) -> dict[int, dict[str, float]]:
    """Mean and stderr of return, and mean success, per measured round over `tasks`."""
    out = {}
    plan = learner.adaptation(tasks, rounds, version, episodes)
    for phase, batches in drive(plan, pool, robot, horizon, seed, 0, evaluation=True):
        returns = np.array([b.mean_return() for b in batches])
        success = np.array([b.success_rate() for b in batches])
        out[phase.measures[0]] = {"return": float(returns.mean()),
                                  "return_se": float(returns.std() / np.sqrt(len(returns))),
                                  "success": float(success.mean())}
    return out
