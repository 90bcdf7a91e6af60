"""The meta-training loop. One meta-iteration: sample tasks -> drive the learner's `collect` plan (each
phase sampled on the pool with named seed streams) -> `learner.update()` -> metrics, tracking, checkpoint.
The loop knows no learner's phases (learner/interface.py); the builder (learner/builder.py) makes the
pool, learner and tracker; evaluation runs under one `EvalProtocol` (learner/evaluation.py).
With `train.overlap`, the next iteration's first phase is collected during `update()` (`Trainer.may_prefetch`
says when; metrics `staleness_versions_*` and `learner_blocked_fraction` show what it bought).

>>> result = train(load_config("configs/reach.yaml"))
>>> result.final_eval.table()
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from learner.builder import baseline_models, build, fleet_of, held_out_robots, place_learner, task_distribution
from learner.checkpoint import LoadedCheckpoint, rng_state, save_checkpoint, set_rng_state
from learner.config import Config
from learner.evaluation import (
    ORACLE,
    ROBOT_AGNOSTIC,
    EvalProtocol,
    EvalResult,
    baseline_metrics,
    evaluate,
    evaluate_baselines,
    final_report,
    phase_figures,
)
from learner.interface import Collect, Learner, LearnerFailure
from learner.multitask_eval import TaskEvalResult, evaluate_tasks
from learner.plots import adaptation_figure, per_task_figure
from learner.progress import Progress
from learner.sampling import Opened, Phase, drive, open_plan, requests_for
from learner.seeds import evaluation_seed, request_seed
from learner.stopping import StopOnSignal, Stopped
from learner.tracking import Tracker, find_checkpoint, resolve_tracking_uri
from policy import PolicySpec
from workers.batch import SampleRequest
from workers.pool import WorkerPool

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str
    learner: Learner
    final_eval: EvalResult
    first_eval: EvalResult | None
    spaces: dict
    iterations: int
    env_steps: int
    wall_seconds: float
    tracker: Tracker | None = None
    train_tasks: TaskEvalResult | None = None  # per training task return, no adaptation (eval/tasks.json)
    baselines: dict[str, EvalResult] = field(default_factory=dict)  # from-scratch, oracle, ... on the same protocol
    curve: list[dict] = field(default_factory=list)  # Trainer.curve: the held-out evaluations during training


class Trainer:
    """Owns one job's state; `run()` trains to `train.iterations`, resuming from a checkpoint. Without a
    `learner`, it places one (learner/builder.py) after seeding torch with train.seed."""

    def __init__(self, cfg: Config, pool: WorkerPool, tracker: Tracker, spec: PolicySpec, spaces: dict,
                 placement_group=None, learner: Learner | None = None):
        self.cfg, self.pool, self.tracker, self.spec, self.spaces = cfg, pool, tracker, spec, spaces
        self.tasks = task_distribution(cfg)
        if learner is None:
            learner = place_learner(spec, cfg.learner, self.tasks.tasks("train"), cfg.train.seed, placement_group)
        self.learner = learner
        self.fleet = fleet_of(cfg)
        self.robot = self.fleet.train[0]
        self.iteration, self.env_steps, self.wall_seconds = 0, 0, 0.0
        self.saved_iteration = 0  # the newest iteration this process checkpointed (or resumed from)
        self.checkpoint_dir = Path(cfg.tracking.checkpoint_dir) / tracker.run_id
        eval_tasks = tuple(self.tasks.tasks("test")[: cfg.train.eval_tasks])
        t = cfg.train
        # The method and its baselines under one protocol: held-out tasks on held-out robots when the fleet has them.
        self.protocol = EvalProtocol(eval_tasks, tuple(self.held_out_robots(len(eval_tasks))), tuple(t.eval_steps),
                                     t.eval_episodes, cfg.fleet.horizon, seed=evaluation_seed(t.seed, "held_out"))
        self.guard_trips = 0
        self.prefetched: tuple[list, Opened] | None = None  # next iteration's tasks and opened plan (overlap)
        self.stop: StopOnSignal | None = None  # what `run` watches; `may_prefetch` too
        self.first_eval: EvalResult | None = None
        self.baselines: dict = {}  # name -> learner or PolicyWeights, evaluated next to the method at the end
        # The learning curve: {"iteration", "env_steps", "summary"} per held-out evaluation of this process (the
        # periodic ones and the final one; not kept in checkpoints, so a resumed run's curve starts at the resume).
        self.curve: list[dict] = []

    def held_out_robots(self, count: int) -> list:
        """The robots of `count` held-out tasks (:func:`learner.builder.held_out_robots`)."""
        return held_out_robots(self.cfg, count, self.fleet)

    # ---- one meta-iteration ----------------------------------------------------------------
    def iterate(self) -> dict[str, float]:
        """One meta-iteration. With `train.overlap`, the next iteration's first phase goes to the pool (with the
        pre-update policy) before this one's `update()`, and this one starts from the phase the previous one
        prefetched; every batch is counted once, in the iteration whose plan consumes it."""
        clock = {"started": time.perf_counter(), "plan_seconds": 0.0}
        tasks, opened = self.prefetched if self.prefetched is not None else (self.draw_tasks(), None)
        self.prefetched = None
        plan = opened.plan if opened else self.learner.collect(tasks, self.iteration, self.cfg.train.episodes_per_task)
        phases = drive(plan, self.pool, self.requests, opened, clock)
        clock["sampled"] = time.perf_counter()
        batches = [b for _, phase in phases for b in phase]
        self.tasks.observe(batches)  # per-task results for the curriculum, before the next draw
        stale = [self.iteration - opened.version] * len(phases[0][1]) if opened else []
        if self.may_prefetch():
            self.prefetched = self.prefetch()
            clock["plan_seconds"] += self.prefetched[1].plan_seconds
        clock["updating"] = time.perf_counter()
        with self.failures(f"update at iteration {self.iteration}", tasks):
            metrics = self.learner.update()
        clock["learned"] = time.perf_counter()
        clock["covered"] = self.prefetch_cover(clock["learned"] - clock["updating"])
        clock["done"] = time.perf_counter()
        steps = sum(b.num_steps for b in batches)
        self.env_steps += steps
        self.guard_trips += sum(int(b.stats.get("guard_trips", 0)) for b in batches)
        self.wall_seconds += clock["done"] - clock["started"]
        self.iteration += 1
        staleness = stale + [0] * (len(batches) - len(stale))
        busy = worker_busy_fraction(batches, getattr(self.pool, "num_workers", 1), clock["done"] - clock["started"])
        return {**metrics, **accounting(phases), **timings(clock, steps), "env_steps": self.env_steps,
                "worker_busy_fraction": busy,
                "guard_trips_total": self.guard_trips, "batches": float(len(batches)),
                "staleness_versions_mean": float(np.mean(staleness)) if staleness else 0.0,
                "staleness_versions_max": float(max(staleness, default=0))}

    def draw_tasks(self) -> list:
        """The next iteration's training tasks (the sampler's draw counter moves on)."""
        return self.tasks.sample(self.cfg.train.meta_batch_size, "train")

    def may_prefetch(self) -> bool:
        """Whether the next iteration's first phase is collected during this iteration's update: with
        `train.overlap`, unless the run checkpoints, evaluates or ends after this iteration, or a stop was
        requested. So no checkpoint and no evaluation ever has a prefetched phase in flight, and a run resumed
        from a scheduled checkpoint continues exactly as the uninterrupted run did (tests/learner/test_overlap.py)."""
        t, finished = self.cfg.train, self.iteration + 1
        if not t.overlap or finished >= t.iterations or finished % t.checkpoint_every == 0:
            return False
        if t.eval_every and finished % t.eval_every == 0:
            return False
        return self.stop is None or self.stop.requested is None

    def prefetch(self) -> tuple[list, Opened]:
        """Draw the next iteration's tasks, open its plan and submit its first phase (current, pre-update weights)."""
        tasks, it = self.draw_tasks(), self.iteration + 1
        plan = self.learner.collect(tasks, it, self.cfg.train.episodes_per_task)
        opened = open_plan(plan, self.pool, functools.partial(self.requests, iteration=it), version=self.iteration)
        if opened is None:
            raise RuntimeError(f"{self.cfg.learner.algorithm}: the plan of iteration {it} collects nothing")
        return tasks, opened

    def prefetch_cover(self, learn_seconds: float) -> float:
        """Wait for the prefetched phase; how much of the update the workers spent collecting it. A pool that
        runs in the background covers up to its busiest worker's sampling time; an in-process one, nothing."""
        if self.prefetched is None:
            return 0.0
        opened = self.prefetched[1]
        batches = opened.batches()  # served now, so a fault is handled inside this iteration
        if not opened.pending.concurrent:
            return 0.0
        busy: dict[int, float] = {}
        for batch in batches:
            busy[batch.worker_id] = busy.get(batch.worker_id, 0.0) + float(batch.stats.get("sample_seconds", 0.0))
        return min(learn_seconds, max(busy.values(), default=0.0))

    def requests(self, collect: Collect, iteration: int | None = None) -> list[SampleRequest]:
        """A training phase's requests: task i on the fleet's robot for it at `iteration` (default this one),
        seed stream of the phase."""
        seed, it = self.cfg.train.seed, self.iteration if iteration is None else iteration
        robots = [self.fleet.train_robot(task.task_id, seed, it) for task in collect.tasks]
        horizon = self.cfg.fleet.horizon
        return requests_for(collect, robots, horizon, lambda i: request_seed(seed, collect.stream, it, i))

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self) -> EvalResult:
        with self.failures(f"held-out evaluation after iteration {self.iteration}", self.protocol.tasks):
            return evaluate(self.learner, self.pool, replace(self.protocol, version=f"eval{self.iteration}"))

    def record(self, result: EvalResult) -> EvalResult:
        """Append a held-out evaluation to the learning curve (`self.curve`); returns it."""
        self.curve.append({"iteration": self.iteration, "env_steps": self.env_steps,
                           "summary": {str(k): v for k, v in result.summary().items()}})
        return result

    @contextlib.contextmanager
    def failures(self, where: str, tasks) -> Iterator[None]:
        """Re-raise a learner's numerical failure as `LearnerFailure` naming the algorithm, where it happened,
        the tasks (and their families) and the cause; env failures and stops pass through unchanged."""
        try:
            yield
        except (LearnerFailure, Stopped, KeyboardInterrupt):
            raise
        except (RuntimeError, ValueError, ArithmeticError) as exc:
            if type(exc).__name__ in ("EnvFailure", "WorkerFailure"):
                raise
            families = sorted({task.family for task in tasks})
            ids = ", ".join(task.task_id for task in list(tasks)[:4]) + (", ..." if len(tasks) > 4 else "")
            raise LearnerFailure(f"{self.cfg.learner.algorithm} {where} failed on tasks of family "
                                 f"{'+'.join(families)} ({ids}): {type(exc).__name__}: {exc}") from exc

    def evaluate_train_tasks(self) -> TaskEvalResult:
        """Each training task's return without adaptation (first `eval_tasks` of them): where a shared
        policy is worse on a task than that task's single-task baseline, that is negative transfer."""
        t = self.cfg.train
        tasks = tuple(self.tasks.tasks("train")[: t.eval_tasks])
        protocol = EvalProtocol(tasks, (self.robot,) * len(tasks), (0,), t.eval_episodes, self.cfg.fleet.horizon,
                                seed=evaluation_seed(t.seed, "train_tasks"), version=f"taskeval{self.iteration}")
        return evaluate_tasks(self.learner, self.pool, protocol)

    def evaluate_baselines(self) -> dict[str, EvalResult]:
        """The from-scratch baseline (a fresh learner of the same kind), the models in `self.baselines`
        (name -> learner, or PolicyWeights loaded into a learner of this config) and the learner's own oracle
        yardstick when it has one (`Learner.oracle`), under `evaluate`'s protocol."""
        models = baseline_models(self.learner, self.spec, self.cfg.learner, self.tasks.tasks("train"), self.baselines)
        oracle = self.learner.oracle()
        if oracle is None and self.cfg.train.oracle:
            from learner.yardsticks import train_oracle

            oracle = train_oracle(self, self.env_steps)
        if oracle is not None and ORACLE not in models:
            models[ORACLE] = oracle
        if self.cfg.train.robot_agnostic and ROBOT_AGNOSTIC not in models:
            from learner.yardsticks import train_robot_agnostic

            models[ROBOT_AGNOSTIC] = train_robot_agnostic(self, self.env_steps)
        return evaluate_baselines(models, self.pool, replace(self.protocol, version=f"eval{self.iteration}"))

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.prefetched is not None:  # `may_prefetch` keeps checkpoints off prefetched iterations
            raise RuntimeError(f"iteration {self.iteration}'s first phase is in flight: a checkpoint now would lose "
                               "it; finish the iteration (`iterate()`) first")
        return {"iteration": self.iteration, "env_steps": self.env_steps, "wall_seconds": self.wall_seconds,
                "learner": self.learner.state_dict(), "tasks": self.tasks.get_state(),
                "rng": rng_state(), "config": self.cfg.to_dict(), "guard_trips": self.guard_trips}

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self.wall_seconds = float(state["wall_seconds"])
        self.learner.load_state_dict(state["learner"])
        self.tasks.set_state(state["tasks"])
        self.guard_trips = int(state.get("guard_trips", 0))
        if "rng" in state:
            set_rng_state(state["rng"])
        else:  # a checkpoint from before all RNGs were saved
            torch.set_rng_state(state["torch_rng"])

    def save(self) -> Path:
        self.saved_iteration = self.iteration
        path = save_checkpoint(self.checkpoint_dir, self.iteration, self.state_dict(), self.cfg.train.keep_checkpoints)
        self.tracker.log_artifact(path, "checkpoints")
        return path

    def restore(self, found: LoadedCheckpoint | None) -> bool:
        """Load ``found``, the newest verified checkpoint (`learner.tracking.find_checkpoint`: local, else the
        run's MLflow copy), and say which on stderr."""
        if found is None:
            return False
        self.load_state_dict(found.state)
        self.saved_iteration = self.iteration
        skipped = "".join(f" (skipped unreadable {path}: {why})" for path, why in found.skipped)
        skipped += "".join(f" (skipped unverified {path}: no sha256 recorded)" for path in found.unverified)
        message = f"resumed from {found.path} at iteration {self.iteration}{skipped}"
        log.info(message)
        print(f"metafleet: {message}", file=sys.stderr, flush=True)  # the CLI user must see a fallback
        self.tracker.mark_resumed(self.iteration)
        return True

    # ---- the loop --------------------------------------------------------------------------
    def run(self, out: Progress | None = None, stop: StopOnSignal | None = None) -> TrainResult:
        """Train to `train.iterations`; with `stop`, a SIGINT/SIGTERM ends the run after the iteration in
        progress (`stop_here`)."""
        progress = out or Progress(self.cfg.train.iterations, start=self.iteration)
        try:
            return self._run(progress, stop)
        finally:
            if hasattr(progress, "close"):  # a terminal's bar gives the cursor back, whatever ended the run
                progress.close()

    def _run(self, progress: Progress, stop: StopOnSignal | None) -> TrainResult:
        cfg = self.cfg.train
        if self.iteration == 0 and cfg.eval_every > 0:
            self.first_eval = self.record(self.evaluate())
            self.tracker.log_metrics(self.first_eval.metrics(), step=0)
            progress.line("held-out tasks before meta-training:\n" + self.first_eval.table())
        self.stop = stop
        while self.iteration < cfg.iterations:
            # A stop with a prefetched phase in flight finishes that iteration first (its batches are counted,
            # never dropped); `may_prefetch` starts no further one.
            if stop is not None and stop.requested is not None and self.prefetched is None:
                self.stop_here(stop.requested)
            metrics = self.iterate()
            self.tracker.log_metrics(metrics, step=self.iteration)
            progress.update(self.iteration, progress_text(metrics))
            if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.iteration < cfg.iterations:
                self.tracker.log_metrics(self.record(self.evaluate()).metrics(), step=self.iteration)
            if self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.iterations:
                self.save()
        if stop is not None and stop.requested is not None:
            self.stop_here(stop.requested)
        final = self.record(self.evaluate())
        baselines = self.evaluate_baselines()
        self.tracker.log_metrics({**final.metrics(), **baseline_metrics(baselines)}, step=self.iteration)
        self.tracker.log_dict(final_report(final, baselines), "eval/final.json")
        self.tracker.log_figure(adaptation_figure(final, self.first_eval, self.cfg.name, baselines),
                                "eval/adaptation.png")
        self.tracker.log_figure(per_task_figure({"meta-trained": final, **baselines}, self.cfg.name),
                                "eval/per_task.png")
        train_tasks = self.evaluate_train_tasks()
        self.tracker.log_metrics(train_tasks.metrics(), step=self.iteration)
        self.tracker.log_dict(train_tasks.to_dict(), "eval/tasks.json")
        return TrainResult(self.tracker.run_id, self.learner, final, self.first_eval, self.spaces,
                           self.iteration, self.env_steps, self.wall_seconds, train_tasks=train_tasks,
                           baselines=baselines, curve=list(self.curve))


    def stop_here(self, signum: int) -> None:
        """Checkpoint the last finished iteration, mark the MLflow run KILLED and raise `Stopped`."""
        if self.iteration > self.saved_iteration:
            self.save()
        self.tracker.close("KILLED")
        raise Stopped(f"stopped after iteration {self.iteration} of {self.cfg.train.iterations}", signum,
                      self.tracker.run_id, self.iteration)


def accounting(phases: list[Phase]) -> dict[str, float]:
    """Per-iteration figures from what was collected: each phase's return and success (by its label: MAML-style
    learners' pre_/post_return, pre_/post_success) and guard trips (steps dropped)."""
    trips = sum(int(b.stats.get("guard_trips", 0)) for _, batches in phases for b in batches)
    return {"guard_trips": float(trips), **phase_figures(phases)}


def worker_busy_fraction(batches: list, workers: int, wall: float) -> float:
    """The share of an iteration's wall time the average rollout worker spent inside rollouts (the batches' own
    `sample_seconds`): the rest is the learner, the driver's plan code, Ray's dispatch and transfer, and
    workers waiting for the slowest one at the end of each phase. With `train.overlap` a prefetched phase is
    counted in the iteration that consumes it (its rollouts ran during the previous one's update)."""
    seconds = sum(float(b.stats.get("sample_seconds", 0.0)) for b in batches)
    return seconds / max(workers, 1) / max(wall, 1e-9)


def timings(clock: dict[str, float], steps: int) -> dict[str, float]:
    """An iteration's time figures. `learner_blocked_fraction`: the share of the iteration the workers sat idle
    waiting for the learner (its plan code between phases, and the part of `update()` no prefetched phase covered)."""
    wall = max(clock["done"] - clock["started"], 1e-9)
    update = clock["learned"] - clock["updating"]
    return {"env_steps_per_s": steps / max(clock["sampled"] - clock["started"], 1e-9),
            "sample_seconds": clock["sampled"] - clock["started"],
            "prefetch_seconds": clock["updating"] - clock["sampled"],
            "learn_seconds": update, "prefetch_wait_seconds": clock["done"] - clock["learned"],
            "plan_seconds": clock["plan_seconds"], "iteration_seconds": wall,
            "learner_blocked_fraction": (clock["plan_seconds"] + update - clock["covered"]) / wall}


def progress_text(metrics: dict[str, float]) -> str:
    """The CLI progress line: return and success of each collected phase, throughput."""
    labels = [k.removesuffix("_return") for k in metrics if k.endswith("_return")]
    returns = " ".join(f"{label} {metrics[label + '_return']:.1f}" for label in labels)
    successes = "->".join(f"{metrics[label + '_success']:.2f}" for label in labels)
    return f"return {returns} | success {successes} | {metrics['env_steps_per_s']:.0f} steps/s"


def train(cfg: Config, resume_run_id: str | None = None, pool: WorkerPool | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Run (or resume) one training job; the MLflow run stays open (`result.tracker`) so the
    caller can register the policy into it, then close it."""
    found = None  # a resume's checkpoint, verified against the run's digests before anything starts or changes
    if resume_run_id is not None:
        found = find_checkpoint(resolve_tracking_uri(cfg.tracking.tracking_uri), resume_run_id,
                                Path(cfg.tracking.checkpoint_dir) / resume_run_id)
    # Signal handlers go in after the pool (and Ray) start, so ours replace Ray's (a SIGTERM stack dump).
    with build(cfg, resume_run_id, pool) as run, StopOnSignal() as stop:
        trainer = Trainer(cfg, run.pool, run.tracker, run.spec, run.spaces, learner=run.learner)
        if resume_run_id is not None and not trainer.restore(found):
            log.warning("run %s has no checkpoint yet; starting from iteration 0", resume_run_id)
            run.tracker.mark_resumed(0)  # what the killed job logged stays; re-done steps are not logged twice
        result = trainer.run(progress, stop)
        result.learner = result.learner.local()  # callers get a plain one
        result.tracker = run.tracker
    return result
