"""PEARL adapts: on a two-goal point task (goal left or right, hidden), the policy acting with z from the
posterior after one context episode must beat the same policy acting with z from the prior (about 23 s of
CPU: 3000 gradient steps). A learner
that ignores its context (or whose encoder carries no task information) has the same return in both."""

from __future__ import annotations

import numpy as np
import torch

from fleet.tasks import Task
from learner.config import LearnerConfig
from learner.pearl import PEARL
from policy import PolicySpec
from tests.fakes import ROBOT, point_env_factory
from tests.learner.pearl_driver import evaluate, train
from workers.pool import LocalWorkerPool

HORIZON = 10


def two_goal_tasks(n: int, split: str) -> list[Task]:
    return [Task("point", f"point/{split}/{i}", {"goal": [0.3 if i % 2 else -0.3, 0.0]}) for i in range(n)]


def test_posterior_z_beats_prior_z_after_one_context_episode():
    torch.set_num_threads(1)
    config = LearnerConfig(algorithm="pearl", hidden_sizes=(32, 32), latent_dim=2, sac_lr=3e-3, gamma=0.9,
                           batch_size=32, context_size=HORIZON, tasks_per_step=4, gradient_steps=100,
                           buffer_size=1000, device="cpu")
    learner, pool = PEARL(PolicySpec(2, 2), config, seed=0), LocalWorkerPool(1, point_env_factory)
    train(learner, pool, two_goal_tasks(4, "train"), ROBOT, HORIZON, iterations=30, meta_batch=4)
    result = evaluate(learner, pool, two_goal_tasks(16, "test"), ROBOT, HORIZON, rounds=2, episodes=2)
    prior, posterior = result[0]["return"], result[1]["return"]
    # Walking to the goal scores about -0.45, staying put -3, walking the wrong way about -6. A policy that
    # does not use the context reaches one side's goal at best: about half the tasks.
    assert posterior > prior + 1.0, result
    assert posterior > -1.0 and result[1]["success"] >= 0.9, result
    assert np.isfinite(prior)
