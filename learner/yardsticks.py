"""Yardsticks trained at the end of a run on its own training tasks, pool and robots for the same number of env
steps as the run, then evaluated next to the method without adaptation (`learner.belief.OracleLearner`):

- the oracle, for learners that do not carry one (`Learner.oracle()` is None): multi-task PPO given each task's
  true parameters (`conditioning: concat`, `task_encoding: params`; `train.oracle: true`);
- the robot-agnostic policy (`train.robot_agnostic: true`): multi-task PPO told nothing, neither the task nor the
  robot, over the same training fleet - domain randomisation, what a robot-adaptive learner must beat.

Each roughly doubles a run's time.

    oracle = train_oracle(trainer, env_steps=trainer.env_steps)    # -> Learner, evaluated like any baseline
    agnostic = train_robot_agnostic(trainer, env_steps=trainer.env_steps)
"""

from __future__ import annotations

import math
import time

import torch

from learner.belief import OracleLearner
from learner.builder import make_learner
from learner.config import LearnerConfig
from learner.interface import Learner
from learner.sampling import drive
from learner.seeds import derive_seed

ORACLE_SEED_OFFSET = 3_000_017  # the oracle's own task draws, network init and rollouts: never the run's
AGNOSTIC_SEED_OFFSET = 4_000_037  # the robot-agnostic yardstick's own streams
KEEP = ("hidden_sizes", "init_std", "ppo_epochs", "clip", "gamma", "gae_lambda", "max_grad_norm", "device",
        "normalization", "minibatches")


def oracle_config(run: LearnerConfig) -> LearnerConfig:
    """MT-PPO with the true params concatenated, with the run's network size, PPO settings and device."""
    return LearnerConfig(algorithm="mtppo", conditioning="concat", task_encoding="params", outer_lr=1e-3,
                         **{k: getattr(run, k) for k in KEEP})


def agnostic_config(run: LearnerConfig) -> LearnerConfig:
    """MT-PPO told nothing (task-agnostic), with the run's network size, PPO settings (step size included) and
    device: the method and this yardstick differ only in what they are told."""
    return LearnerConfig(algorithm="mtppo", conditioning="none", outer_lr=run.outer_lr,
                         **{k: getattr(run, k) for k in KEEP})


def train_oracle(trainer, env_steps: int) -> Learner:
    """Train the oracle on `trainer`'s pool until it has used `env_steps` env steps (whole iterations of the run's
    meta-batch and episodes; at least one)."""
    learner = train_mtppo(trainer, oracle_config(trainer.cfg.learner), env_steps, ORACLE_SEED_OFFSET, "oracle")
    return OracleLearner(learner.policy_weights("oracle"), learner.encoder.encode)


def train_robot_agnostic(trainer, env_steps: int) -> Learner:
    """Train the robot-agnostic yardstick for `env_steps` env steps, as `train_oracle` does."""
    learner = train_mtppo(trainer, agnostic_config(trainer.cfg.learner), env_steps, AGNOSTIC_SEED_OFFSET,
                          "robot_agnostic")
    return OracleLearner(learner.policy_weights("robot-agnostic"), lambda task: ())


def train_mtppo(trainer, config: LearnerConfig, env_steps: int, offset: int, name: str):
    """An MT-PPO learner of `config` trained on `trainer`'s tasks, pool and robots for about `env_steps` env steps
    (whole iterations of the run's meta-batch and episodes; at least one), on its own seed streams (`offset`);
    logs `{name}/env_steps`, `{name}/iterations`, `{name}/train_seconds`."""
    cfg, train_tasks = trainer.cfg, trainer.tasks.tasks("train")
    seed = derive_seed(cfg.train.seed, offset)
    with torch.random.fork_rng(devices=[]):  # the run's own torch stream is left where it was
        torch.manual_seed(seed)
        learner = make_learner(trainer.spec, config, train_tasks)
        t, per_iteration = cfg.train, 2 * cfg.train.meta_batch_size * cfg.train.episodes_per_task * cfg.fleet.horizon
        iterations = max(1, math.ceil(env_steps / per_iteration))
        started, used = time.perf_counter(), 0
        for it in range(iterations):
            tasks = trainer.tasks.sample(t.meta_batch_size, "train")
            phases = drive(learner.collect(tasks, it, t.episodes_per_task), trainer.pool,
                           lambda collect, it=it: trainer.requests(collect, it + offset))
            used += sum(b.num_steps for _, batches in phases for b in batches)
            learner.update()
    trainer.tracker.log_metrics({f"{name}/env_steps": float(used), f"{name}/iterations": float(iterations),
                                 f"{name}/train_seconds": time.perf_counter() - started}, step=trainer.iteration)
    return learner
