"""Learning checks in the default suite for Reptile, Meta-SGD and RL^2: a short run on the nav2d plugin,
two seeds each, must beat the untrained policy on held-out tasks by a margin.

The comparison is paired: the untrained evaluation (before iteration 0) and the final one use the same
held-out tasks, robots and seeds, so a learner whose update did nothing would score a gain of exactly 0.
MAML's learning check is tests/integration/test_learning.py (pybullet reach).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.learner.learning_runs import nav2d_config, nav2d_store, run  # noqa: F401 (a fixture)

RUNS = {  # algorithm -> (iterations, learner settings, round measured, margin on the mean held-out gain)
    "reptile": (15, {"outer_lr": 0.03}, 1, 0.3),
    "metasgd": (12, {"outer_lr": 0.02, "ppo_epochs": 3}, 1, 0.3),
    "rl2": (15, {"outer_lr": 0.02, "rl2_hidden": 16, "trial_episodes": 2, "ppo_epochs": 2}, 1, 0.3),
}


def held_out_gain(algorithm: str, seed: int) -> np.ndarray:
    """Per held-out task: final minus untrained return at the measured round (after 1 gradient step for
    Reptile and Meta-SGD; RL^2: the trial's second episode, after one episode of context)."""
    iterations, learner, measured, _ = RUNS[algorithm]
    result = run(nav2d_config(algorithm, seed, iterations, **learner))
    return np.subtract(result.final_eval.returns[measured], result.first_eval.returns[measured])


@pytest.mark.usefixtures("nav2d_store")
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("algorithm", list(RUNS))
def test_short_training_beats_the_untrained_policy_on_held_out_tasks(algorithm, seed):
    gain = held_out_gain(algorithm, seed)
    print(f"{algorithm} seed {seed}: held-out gain per task {np.round(gain, 2)}")
    assert gain.mean() > RUNS[algorithm][3], gain
