"""Driving a learner's plan (learner/interface.py) against a worker pool: each `Collect` becomes one
`SampleRequest` per task, sampled in one `pool.sample` call, and the batches go back to the plan.

The loop (learner/trainer.py) and the evaluation (learner/evaluation.py) both drive plans this way;
only the robots and the seeds of the requests differ, so they pass those in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fleet.robots import RobotSpec
from learner.interface import Collect, Plan
from workers.batch import Batch, SampleRequest
from workers.pool import WorkerPool

Phase = tuple[Collect, list[Batch]]


def requests_for(collect: Collect, robots: Sequence[RobotSpec], horizon: int,
                 seed_of: Callable[[int], int], deterministic: bool = False) -> list[SampleRequest]:
    """One request per task of `collect`: task i on `robots[i]` with seed `seed_of(i)`."""
    if len(robots) != len(collect.tasks):
        raise ValueError(f"Collect {collect.phase!r}: {len(robots)} robots for {len(collect.tasks)} tasks")
    return [SampleRequest(task, robots[i], collect.weights[i].version, collect.episodes, horizon, seed_of(i),
                          collect.phase, deterministic=collect.deterministic or deterministic,
                          context=collect.context(i), trial_episodes=collect.trial_episodes)
            for i, task in enumerate(collect.tasks)]


def drive(plan: Plan, pool: WorkerPool, requests: Callable[[Collect], list[SampleRequest]]) -> list[Phase]:
    """Run `plan` to its end: every phase sampled on `pool`; returns each phase with its batches, in order."""
    phases: list[Phase] = []
    batches: list[Batch] | None = None
    while True:
        try:
            collect = plan.send(batches)  # type: ignore[arg-type]  # the first send must be None
        except StopIteration:
            return phases
        batches = pool.sample(requests(collect), collect.weights_by_version())
        if len(batches) != len(collect.tasks):
            raise RuntimeError(f"pool returned {len(batches)} batches for {len(collect.tasks)} requests of "
                               f"phase {collect.phase!r}")
        phases.append((collect, batches))
