"""The one builder: a validated `Config` -> the env spaces and policy spec, the worker pool, the learner
(in this process or in a Ray actor, on a GPU in one placement group with the workers when the cluster
has GPUs) and the MLflow tracker. No other module chooses a learner class or a pool.

    with build(cfg) as run:                       # closes the learner actor, the pool and the group
        trainer = Trainer(cfg, run.pool, run.tracker, run.spec, run.spaces, run.learner)
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

import fleet
from fleet.fleetspec import Fleet
from fleet.robots import RobotSpec
from fleet.tasks import Task, TaskDistribution, family_weights
from learner.config import Config, LearnerConfig
from learner.evaluation import FROM_SCRATCH
from learner.interface import Learner
from learner.tracking import Tracker, check_tracking_uri, resolve_tracking_uri
from policy import PolicySpec, PolicyWeights
from workers.backends import make_pool
from workers.pool import WorkerPool

# algorithm -> "module:class", imported on use so one learner's dependencies never load for another.
LEARNERS: dict[str, str] = {
    "maml": "learner.maml:MAML",
    "metasgd": "learner.metasgd:MetaSGD",
    "reptile": "learner.reptile:Reptile",
    "rl2": "learner.rl2:RL2",
    "pearl": "learner.pearl:PEARL",
    "belief": "learner.belief:BeliefLearner",
    "rma": "learner.rma:RMALearner",
    "mtppo": "learner.mtppo:MultiTaskPPO",
    "single_task": "learner.single_task:SingleTaskPPO",
}


def learner_class(algorithm: str) -> type[Learner]:
    if algorithm not in LEARNERS:
        raise ValueError(f"unknown learner.algorithm {algorithm!r}; expected one of {sorted(LEARNERS)}")
    module, _, name = LEARNERS[algorithm].partition(":")
    return getattr(importlib.import_module(module), name)


def make_learner(spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()) -> Learner:
    """The configured learner in this process; `train_tasks` fixes task ids (one-hot contexts, per-task networks)."""
    return learner_class(config.algorithm)(spec, config, train_tasks)


def place_learner(spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = (), seed: int = 0,
                  group=None) -> Learner:
    """The learner where `config.placement` says: in this process, or in a Ray actor (learner/remote.py,
    imported only when the learner may leave the driver, so a local run never imports Ray). `seed` seeds
    torch before the network is built, in whichever process builds it."""
    if config.placement != "driver" and (config.placement == "actor" or "ray" in sys.modules):
        from learner.remote import RemoteLearner, wants_actor

        if wants_actor(config.placement):
            return RemoteLearner(make_learner, spec, config, train_tasks, seed, group)
    torch.manual_seed(seed)
    return make_learner(spec, config, train_tasks)


def fresh_learner(spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task], seed: int = 0,
                  like: PolicyWeights | None = None, load: PolicyWeights | None = None) -> Learner:
    """A learner of `config`'s kind in this process on CPU, built under a forked torch RNG (the run's
    checkpointed stream is left untouched): the from-scratch baseline (`seed`, with `like`'s observation
    normaliser: data statistics, not meta-learned weights), or `load`'s weights in a learner with this
    config (a registered multi-task policy adapted with the same inner step)."""
    config = config.model_copy(update={"device": "cpu", "placement": "driver"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = make_learner(load.spec if load is not None else spec, config, train_tasks)
    policy = fresh.policy  # type: ignore[attr-defined]  # every registered learner keeps theta in .policy
    if load is not None:
        policy.load_weights(load)
    elif like is not None and "obs_mean" in like.arrays:
        with torch.no_grad():
            policy.obs_mean.copy_(torch.as_tensor(np.asarray(like.arrays["obs_mean"]), dtype=torch.float32))
            policy.obs_std.copy_(torch.as_tensor(np.asarray(like.arrays["obs_std"]), dtype=torch.float32))
    return fresh


def baseline_models(learner: Learner, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task],
                    models: dict[str, Learner | PolicyWeights] | None = None,
                    from_scratch: bool = True) -> dict[str, Learner]:
    """The baselines evaluated next to `learner`: FROM_SCRATCH (a fresh learner of its kind with its
    normaliser), then `models` by name: a learner as it is (any algorithm), or PolicyWeights loaded into a
    learner of `config` (adapted with the same inner step)."""
    out: dict[str, Learner] = {}
    if from_scratch:
        out[FROM_SCRATCH] = fresh_learner(spec, config, train_tasks, like=learner.policy_weights("normaliser"))
    for name, model in (models or {}).items():
        if isinstance(model, PolicyWeights):
            out[name] = fresh_learner(spec, config, train_tasks, load=model)
        elif isinstance(model, Learner):
            out[name] = model
        else:
            raise TypeError(f"baseline {name!r} must be a learner or PolicyWeights, got {type(model).__name__}")
    return out


# ---- the run's world -------------------------------------------------------------------------------


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


def held_out_robots(cfg: Config, count: int, fleet: Fleet | None = None) -> list[RobotSpec]:
    """The robots of `count` held-out tasks (training's held-out evaluation, and `fleet eval`): `fleet.eval_robots`
    in turn when named, else the fleet's own choice (every test robot in turn, or every robot when none is held
    out)."""
    fleet = fleet or fleet_of(cfg)
    named = cfg.fleet.eval_robots
    if not named:
        return fleet.eval_robots(count)
    by_id = {r.robot_id: r for r in fleet.test}
    return [by_id[named[i % len(named)]] for i in range(count)]


def task_distribution(cfg: Config) -> TaskDistribution:
    """The run's task split (fixed by fleet.task_seed); sampling order follows train.seed."""
    f = cfg.fleet
    return TaskDistribution(f.family, f.num_train_tasks, f.num_test_tasks, f.task_seed, sampler_seed=cfg.train.seed,
                            curriculum=f.curriculum)


# ---- pool, tracker, all of it ---------------------------------------------------------------------


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


def open_tracker(cfg: Config, resume_run_id: str | None = None) -> Tracker:
    """The run's MLflow run, with its config, task split and fleet logged."""
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    tracker = Tracker(uri, cfg.tracking.experiment, run_id=resume_run_id, run_name=cfg.name)
    try:
        if resume_run_id is None and (cfg.tracking.parent_run_id or cfg.tracking.tags):
            parent = {"mlflow.parentRunId": cfg.tracking.parent_run_id} if cfg.tracking.parent_run_id else {}
            tracker.set_tags({**parent, **cfg.tracking.tags})  # MLflow's UI nests a child under its parent
        tracker.log_params(cfg.flat())
        tracker.log_text(cfg.to_yaml(), "config.yaml")
        split = task_distribution(cfg)
        tracker.log_dict({**{name: [t.to_dict() for t in split.tasks(name)] for name in ("train", "test")},
                          "family_weights": split.weights, "curriculum": cfg.fleet.curriculum}, "tasks.json")
        tracker.log_dict(fleet_of(cfg).to_dict(), "fleet.json")
    except BaseException:
        tracker.close("FAILED")
        raise
    return tracker


@dataclass
class Run:
    """What one training job runs on."""

    spec: PolicySpec
    spaces: dict
    tracker: Tracker
    pool: WorkerPool
    learner: Learner


@contextlib.contextmanager
def build(cfg: Config, resume_run_id: str | None = None, pool: WorkerPool | None = None) -> Iterator[Run]:
    """Spaces (a broken env fails here, before any worker starts), tracker, pool (unless given: then the
    caller closes it) and learner (torch seeded with train.seed first). On the way out the learner actor,
    an own pool and the placement group go; on an error the MLflow run is marked FAILED (on success the
    caller closes it, after registering the policy into it)."""
    check_tracking_uri(resolve_tracking_uri(cfg.tracking.tracking_uri))
    spec, spaces = env_spaces(cfg)
    tracker = open_tracker(cfg, resume_run_id)
    own_pool, group, learner = pool is None, None, None
    try:
        if pool is None:
            pool, group = placed_pool(cfg)
        learner = place_learner(spec, cfg.learner, task_distribution(cfg).tasks("train"), cfg.train.seed, group)
        yield Run(spec, spaces, tracker, pool, learner)
    except BaseException:
        tracker.close("FAILED")
        raise
    finally:
        if learner is not None:
            learner.close()
        if own_pool and pool is not None:
            pool.close()
        release(group)
