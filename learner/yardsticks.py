"""The oracle yardstick for learners that do not carry one (`Learner.oracle()` is None): a multi-task PPO policy
given each task's true parameters (`conditioning: concat`, `task_encoding: params`), trained on the run's own
training tasks, pool and robots for the same number of env steps as the run, then evaluated as
`learner.belief.OracleLearner` next to the method (`train.oracle: true`; it roughly doubles a run's time).

    oracle = train_oracle(trainer, env_steps=trainer.env_steps)    # -> Learner, evaluated like any baseline
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


def oracle_config(run: LearnerConfig) -> LearnerConfig:
    """MT-PPO with the true params concatenated, with the run's network size, PPO settings and device."""
    keep = ("hidden_sizes", "init_std", "ppo_epochs", "clip", "gamma", "gae_lambda", "max_grad_norm", "device",
            "normalization", "minibatches")
    return LearnerConfig(algorithm="mtppo", conditioning="concat", task_encoding="params", outer_lr=1e-3,
                         **{k: getattr(run, k) for k in keep})


def train_oracle(trainer, env_steps: int) -> Learner:
    """Train the oracle on `trainer`'s pool until it has used `env_steps` env steps (whole iterations of the run's
    meta-batch and episodes; at least one)."""
    cfg, train_tasks = trainer.cfg, trainer.tasks.tasks("train")
    seed = derive_seed(cfg.train.seed, ORACLE_SEED_OFFSET)
    with torch.random.fork_rng(devices=[]):  # the run's own torch stream is left where it was
        torch.manual_seed(seed)
        learner = make_learner(trainer.spec, oracle_config(cfg.learner), train_tasks)
        t, per_iteration = cfg.train, 2 * cfg.train.meta_batch_size * cfg.train.episodes_per_task * cfg.fleet.horizon
        iterations = max(1, math.ceil(env_steps / per_iteration))
        started, used = time.perf_counter(), 0
        for it in range(iterations):
            tasks = trainer.tasks.sample(t.meta_batch_size, "train")
            phases = drive(learner.collect(tasks, it, t.episodes_per_task), trainer.pool,
                           lambda collect, it=it: trainer.requests(collect, it + ORACLE_SEED_OFFSET))
            used += sum(b.num_steps for _, batches in phases for b in batches)
            learner.update()
    encoder = learner.encoder
    trainer.tracker.log_metrics({"oracle/env_steps": float(used), "oracle/iterations": float(iterations),
                                 "oracle/train_seconds": time.perf_counter() - started}, step=trainer.iteration)
    return OracleLearner(learner.policy_weights("oracle"), encoder.encode)
