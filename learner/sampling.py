"""Driving a learner's plan (learner/interface.py) against a worker pool: each `Collect` becomes one
`SampleRequest` per task, sampled in one `pool.sample` call, and the batches go back to the plan.
`open_plan` submits a plan's first phase without waiting (`pool.submit`), so the loop can run the
learner's update while the workers collect it (`train.overlap`); `drive(plan, ..., opened)` continues.

The loop (learner/trainer.py) and the evaluation (learner/evaluation.py) both drive plans this way;
only the robots and the seeds of the requests differ, so they pass those in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleet.robots import RobotSpec, robot_vector
from learner.interface import Collect, Plan
from workers.batch import Batch, SampleRequest
from workers.pool import Pending, WorkerPool

Phase = tuple[Collect, list[Batch]]


def requests_for(collect: Collect, robots: Sequence[RobotSpec], horizon: int,
                 seed_of: Callable[[int], int], deterministic: bool = False) -> list[SampleRequest]:
    """One request per task of `collect`: task i on `robots[i]` with seed `seed_of(i)`; its context is the
    robot's vector of `collect.robot_params` when the phase names any, else the phase's task vector."""
    if len(robots) != len(collect.tasks):
        raise ValueError(f"Collect {collect.phase!r}: {len(robots)} robots for {len(collect.tasks)} tasks")
    return [SampleRequest(task, robots[i], collect.weights[i].version, collect.episodes, horizon, seed_of(i),
                          collect.phase, deterministic=collect.deterministic or deterministic,
                          context=context_of(collect, i, robots[i]), trial_episodes=collect.trial_episodes)
            for i, task in enumerate(collect.tasks)]


def context_of(collect: Collect, i: int, robot: RobotSpec) -> tuple[float, ...]:
    """What task i of `collect` is told: its robot's privileged vector, or the phase's task vector."""
    if collect.robot_params:
        return robot_vector(robot, collect.robot_params)
    return collect.context(i)


@dataclass
class Opened:
    """A plan whose first phase is on the pool (`open_plan`): what `drive` continues from.

    `version`: the learner's version (updates done) when the phase was submitted; the loop compares it
    with the version when the batches are consumed (the phase's staleness). `plan_seconds`: time spent
    in the learner's plan code while opening it (the workers had nothing to do)."""

    plan: Plan
    collect: Collect
    pending: Pending
    version: int
    plan_seconds: float = 0.0

    def batches(self) -> list[Batch]:
        """The first phase's batches (blocks until the pool has served them all)."""
        return checked(self.collect, self.pending.result())


def open_plan(plan: Plan, pool: WorkerPool, requests: Callable[[Collect], list[SampleRequest]],
              version: int) -> Opened | None:
    """Start `plan` and submit its first phase without waiting for it; None for a plan that collects nothing."""
    started = time.perf_counter()
    try:
        collect = next(plan)
    except StopIteration:
        return None
    plan_seconds = time.perf_counter() - started
    return Opened(plan, collect, pool.submit(requests(collect), collect.weights_by_version()), version, plan_seconds)


def drive(plan: Plan, pool: WorkerPool, requests: Callable[[Collect], list[SampleRequest]],
          opened: Opened | None = None, timing: dict[str, float] | None = None) -> list[Phase]:
    """Run `plan` to its end: every phase sampled on `pool`; returns each phase with its batches, in order.
    With `opened` (`open_plan` of this plan), its first phase is already on the pool. `timing`, when given,
    gets `plan_seconds` added: time in the learner's plan code (between phases the workers are idle)."""
    phases: list[Phase] = []
    batches: list[Batch] | None = None
    if opened is not None:
        batches = opened.batches()
        phases.append((opened.collect, batches))
    timing = {} if timing is None else timing
    while True:
        started = time.perf_counter()
        try:
            collect = plan.send(batches)  # type: ignore[arg-type]  # the first send must be None
        except StopIteration:
            return phases
        finally:
            timing["plan_seconds"] = timing.get("plan_seconds", 0.0) + time.perf_counter() - started
        batches = checked(collect, pool.sample(requests(collect), collect.weights_by_version()))
        phases.append((collect, batches))


def checked(collect: Collect, batches: list[Batch]) -> list[Batch]:
    """`batches` if there is one per task of `collect`."""
    if len(batches) != len(collect.tasks):
        raise RuntimeError(f"pool returned {len(batches)} batches for {len(collect.tasks)} requests of "
                           f"phase {collect.phase!r}")
    return batches
