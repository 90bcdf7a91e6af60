"""The meta-training loop: tasks -> support -> adapt -> query -> update -> track/checkpoint.

>>> result = train(load_config("configs/reach.yaml"))
>>> result.final_eval.table()
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import fleet
from fleet.fleetspec import Fleet
from fleet.robots import RobotSpec
from fleet.tasks import Task, TaskDistribution, family_weights
from learner.base import MetaLearner
from learner.checkpoint import load_newest, rng_state, save_checkpoint, set_rng_state
from learner.config import Config, LearnerConfig
from learner.evaluation import (
    EvalResult,
    baseline_metrics,
    evaluate_baselines,
    final_report,
    meta_evaluate,
    request_seed,
)
from learner.multitask_eval import TaskEvalResult, evaluate_tasks
from learner.plots import adaptation_figure, per_task_figure
from learner.progress import Progress
from learner.tracking import Tracker, check_tracking_uri, resolve_tracking_uri
from policy import PolicySpec
from workers.backends import make_pool
from workers.batch import Batch, SampleRequest
from workers.pool import WorkerPool

log = logging.getLogger(__name__)
# algorithm -> "module:class", imported on use so one learner's dependencies never load for another.
LEARNERS: dict[str, str] = {
    "maml": "learner.maml:MAML",
    "metasgd": "learner.metasgd:MetaSGD",
    "reptile": "learner.reptile:Reptile",
    "rl2": "learner.rl2:RL2",
    "mtppo": "learner.mtppo:MultiTaskPPO",
    "single_task": "learner.single_task:SingleTaskPPO",
}
SUPPORT, QUERY = 1, 2


def learner_class(algorithm: str) -> type[MetaLearner]:
    module, _, name = LEARNERS[algorithm].partition(":")
    return getattr(importlib.import_module(module), name)


def make_learner(spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()) -> MetaLearner:
    """The configured learner; `train_tasks` fixes task ids (one-hot contexts, per-task heads/networks)."""
    return learner_class(config.algorithm)(spec, config, train_tasks)


def place_learner(spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task], seed: int,
                  placement_group=None) -> MetaLearner:
    """The learner in this process, or in a Ray actor (`learner.placement`; see learner/remote.py, imported
    only when the learner may leave the driver, so a local run never imports Ray)."""
    if config.placement == "driver" or (config.placement == "auto" and "ray" not in sys.modules):
        return make_learner(spec, config, train_tasks)
    from learner.remote import place_learner as place

    return place(spec, config, train_tasks, seed, placement_group)  # type: ignore[return-value]  # a proxy


def env_spaces(cfg: Config) -> tuple[PolicySpec, dict]:
    """Build one env (first family, first train robot) to read its spaces: the policy spec and a JSON
    description. Config validation already checked that every family and robot model agree."""
    env = fleet.make_env(next(iter(family_weights(cfg.fleet.family))), robot_of(cfg), cfg.fleet.horizon)
    try:
        obs, act = env.observation_space, env.action_space
        spaces = {name: box_to_dict(space) for name, space in (("observation", obs), ("action", act))}
    finally:
        env.close()
    spec = PolicySpec(int(np.prod(obs.shape)), int(np.prod(act.shape)), tuple(cfg.learner.hidden_sizes))
    return spec, spaces


def box_to_dict(space) -> dict:
    return {"shape": list(space.shape), "low": space.low.tolist(), "high": space.high.tolist(),
            "dtype": str(space.dtype)}


def fleet_of(cfg: Config) -> Fleet:
    """The run's robots: fleet.robots / fleet.fleet_file, or the one-robot fleet.robot / fleet.robot_id."""
    return cfg.fleet.build_fleet()


def robot_of(cfg: Config) -> RobotSpec:
    """The fleet's first training robot (the one robot of a one-robot fleet)."""
    return fleet_of(cfg).train[0]


def task_distribution(cfg: Config) -> TaskDistribution:
    """The run's task split (fixed by fleet.task_seed); sampling order follows train.seed."""
    f = cfg.fleet
    return TaskDistribution(f.family, f.num_train_tasks, f.num_test_tasks, f.task_seed, sampler_seed=cfg.train.seed,
                            curriculum=f.curriculum)


@dataclass
class TrainResult:
    run_id: str
    learner: MetaLearner
    final_eval: EvalResult
    first_eval: EvalResult | None
    spaces: dict
    iterations: int
    env_steps: int
    wall_seconds: float
    tracker: Tracker | None = None
    train_tasks: TaskEvalResult | None = None  # per training task return, no adaptation (eval/tasks.json)


class Trainer:
    """Owns one job's state; `run()` trains to `train.iterations`, resuming from a checkpoint."""

    def __init__(self, cfg: Config, pool: WorkerPool, tracker: Tracker, spec: PolicySpec, spaces: dict,
                 placement_group=None):
        self.cfg, self.pool, self.tracker, self.spaces = cfg, pool, tracker, spaces
        torch.manual_seed(cfg.train.seed)
        self.tasks = task_distribution(cfg)
        self.learner = place_learner(spec, cfg.learner, self.tasks.tasks("train"), cfg.train.seed, placement_group)
        self.fleet = fleet_of(cfg)
        self.robot = self.fleet.train[0]
        self.iteration, self.env_steps, self.wall_seconds = 0, 0, 0.0
        self.checkpoint_dir = Path(cfg.tracking.checkpoint_dir) / tracker.run_id
        self.eval_tasks = self.tasks.tasks("test")[: cfg.train.eval_tasks]
        self.eval_robots = self.fleet.eval_robots(len(self.eval_tasks))  # held-out robots when the fleet has them
        self.guard_trips = 0
        self.first_eval: EvalResult | None = None
        self.baselines: dict = {}  # name -> learner or PolicyWeights, evaluated next to the method at the end

    # ---- one meta-iteration ----------------------------------------------------------------
    def iterate(self) -> dict[str, float]:
        cfg, it = self.cfg, self.iteration
        started = time.perf_counter()
        tasks = self.tasks.sample(cfg.train.meta_batch_size, "train")
        version = f"it{it}"
        behaviour = self.learner.weights_for(tasks, version)
        support_requests = self._requests(tasks, [w.version for w in behaviour], SUPPORT)
        support = self.pool.sample(support_requests, {w.version: w for w in behaviour})
        adapted = self.learner.adapt_for_training(support, version)
        query_requests = self._requests(tasks, [w.version for w in adapted], QUERY)
        query = self.pool.sample(query_requests, {w.version: w for w in adapted})
        sampled = time.perf_counter()
        metrics = self.learner.update(support, query)
        self.learner.observe([*support, *query])
        self.tasks.observe([*support, *query])  # per-task results for the curriculum
        done = time.perf_counter()
        steps = sum(b.num_steps for b in [*support, *query])
        self.env_steps += steps
        self.guard_trips += sum(int(b.stats.get("guard_trips", 0)) for b in [*support, *query])
        self.wall_seconds += done - started
        self.iteration += 1
        return {**metrics, **batch_metrics(support, query), "env_steps": self.env_steps,
                "guard_trips_total": self.guard_trips,
                "env_steps_per_s": steps / max(sampled - started, 1e-9),
                "sample_seconds": sampled - started, "learn_seconds": done - sampled}

    def _requests(self, tasks, versions, phase: int) -> list[SampleRequest]:
        cfg = self.cfg
        versions = versions if isinstance(versions, list) else [versions] * len(tasks)
        return [
            SampleRequest(task, self.fleet.train_robot(task.task_id, cfg.train.seed, self.iteration), v,
                          cfg.train.episodes_per_task, cfg.fleet.horizon,
                          request_seed(cfg.train.seed, self.iteration, i, phase),
                          "support" if phase == SUPPORT else "query",
                          context=self.learner.context_for(task), trial_episodes=self.learner.trial_episodes)
            for i, (task, v) in enumerate(zip(tasks, versions))
        ]

    def evaluate(self) -> EvalResult:
        t = self.cfg.train
        return meta_evaluate(self.learner, self.pool, self.eval_tasks, self.eval_robots[0], t.eval_steps,
                             t.eval_episodes, self.cfg.fleet.horizon, seed=t.seed + 1_000_003,
                             version=f"eval{self.iteration}", robots=self.eval_robots)

    def evaluate_train_tasks(self) -> TaskEvalResult:
        """Each training task's return without adaptation (first `eval_tasks` of them): where a shared
        policy is worse on a task than that task's single-task baseline, that is negative transfer."""
        t = self.cfg.train
        return evaluate_tasks(self.learner, self.pool, self.tasks.tasks("train")[: t.eval_tasks], self.robot,
                              t.eval_episodes, self.cfg.fleet.horizon, seed=t.seed + 2_000_003,
                              version=f"taskeval{self.iteration}")

    def evaluate_baselines(self) -> dict[str, EvalResult]:
        """The from-scratch baseline and the models in `self.baselines` (name -> multi-task learner or
        PolicyWeights), under `evaluate`'s protocol: same tasks, robots, steps, episodes and seeds."""
        t = self.cfg.train
        return evaluate_baselines(self.learner, self.pool, self.eval_tasks, self.eval_robots[0], t.eval_steps,
                                  t.eval_episodes, self.cfg.fleet.horizon, seed=t.seed + 1_000_003,
                                  version=f"eval{self.iteration}", robots=self.eval_robots, models=self.baselines)

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
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
        path = save_checkpoint(self.checkpoint_dir, self.iteration, self.state_dict(), self.cfg.train.keep_checkpoints)
        self.tracker.log_artifact(path, "checkpoints")
        return path

    def restore(self) -> bool:
        """Load the newest readable checkpoint (local, else the run's MLflow copy), and say which on stderr."""
        found = load_newest(self.checkpoint_dir)
        if found is None:
            remote = self.tracker.download("checkpoints")
            found = load_newest(remote) if remote else None
        if found is None:
            return False
        self.load_state_dict(found.state)
        skipped = "".join(f" (skipped unreadable {path}: {why})" for path, why in found.skipped)
        message = f"resumed from {found.path} at iteration {self.iteration}{skipped}"
        log.info(message)
        print(f"metafleet: {message}", file=sys.stderr, flush=True)  # the CLI user must see a fallback
        self.tracker.mark_resumed(self.iteration)
        return True

    # ---- the loop --------------------------------------------------------------------------
    def run(self, out: Progress | None = None) -> TrainResult:
        cfg = self.cfg.train
        progress = out or Progress(cfg.iterations, start=self.iteration)
        if self.iteration == 0 and cfg.eval_every > 0:
            self.first_eval = self.evaluate()
            self.tracker.log_metrics(self.first_eval.metrics(), step=0)
            progress.line("held-out tasks before meta-training:\n" + self.first_eval.table())
        while self.iteration < cfg.iterations:
            metrics = self.iterate()
            self.tracker.log_metrics(metrics, step=self.iteration)
            progress.update(self.iteration, f"return pre {metrics['pre_return']:.1f} post {metrics['post_return']:.1f}"
                            f" | success {metrics['pre_success']:.2f}->{metrics['post_success']:.2f}"
                            f" | {metrics['env_steps_per_s']:.0f} steps/s")
            if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.iteration < cfg.iterations:
                self.tracker.log_metrics(self.evaluate().metrics(), step=self.iteration)
            if self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.iterations:
                self.save()
        final = self.evaluate()
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
                           self.iteration, self.env_steps, self.wall_seconds, train_tasks=train_tasks)


def batch_metrics(support: list[Batch], query: list[Batch]) -> dict[str, float]:
    """Per-iteration figures: returns and success before/after adaptation, guard trips (steps dropped)."""
    return {
        "guard_trips": float(sum(int(b.stats.get("guard_trips", 0)) for b in [*support, *query])),
        "pre_return": float(np.mean([b.mean_return() for b in support])),
        "post_return": float(np.mean([b.mean_return() for b in query])),
        "pre_success": float(np.mean([b.success_rate() for b in support])),
        "post_success": float(np.mean([b.success_rate() for b in query])),
    }


def train(cfg: Config, resume_run_id: str | None = None, pool: WorkerPool | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Run (or resume) one training job; the MLflow run stays open (`result.tracker`) so the
    caller can register the policy into it, then close it."""
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    check_tracking_uri(uri)
    spec, spaces = env_spaces(cfg)  # a broken env fails here, before any worker starts
    tracker = Tracker(uri, cfg.tracking.experiment, run_id=resume_run_id, run_name=cfg.name)
    own_pool, group, trainer = pool is None, None, None
    try:
        tracker.log_params(cfg.flat())
        tracker.log_text(cfg.to_yaml(), "config.yaml")
        split = task_distribution(cfg)
        tracker.log_dict({**{name: [t.to_dict() for t in split.tasks(name)] for name in ("train", "test")},
                          "family_weights": split.weights, "curriculum": cfg.fleet.curriculum}, "tasks.json")
        tracker.log_dict(fleet_of(cfg).to_dict(), "fleet.json")
        if pool is None:
            pool, group = placed_pool(cfg)
        trainer = Trainer(cfg, pool, tracker, spec, spaces, group)
        if resume_run_id is not None and not trainer.restore():
            log.warning("run %s has no checkpoint yet; starting from iteration 0", resume_run_id)
            tracker.mark_resumed(0)  # what the killed job logged stays; re-done steps are not logged twice
        result = trainer.run(progress)
        result.learner = getattr(result.learner, "to_local", lambda: result.learner)()  # callers get a plain one
        result.tracker = tracker
    except BaseException:
        tracker.close("FAILED")
        raise
    finally:
        if trainer is not None and hasattr(trainer.learner, "close"):  # a learner actor
            trainer.learner.close()
        if own_pool and pool is not None:
            pool.close()
        release(group)
    return result


def placed_pool(cfg: Config) -> tuple[WorkerPool, object | None]:
    """`make_pool`, except that a learner bound for a GPU actor reserves itself and the Ray workers in one
    placement group (learner/remote.py)."""
    if cfg.workers.backend == "local" and cfg.learner.placement != "actor":
        return make_pool(cfg.workers.backend, cfg.workers.num_workers), None
    from learner.remote import placed_pool as reserve

    return reserve(cfg)


def release(group) -> None:
    """Remove the placement group (its actors go with it)."""
    if group is not None:
        import ray

        ray.util.remove_placement_group(group)
