"""Short training runs on the goal-hidden 2-D navigation plugin (examples/nav2d.py) through `train(cfg)`,
shared by the default suite's learning checks. One MLflow sqlite store per test module: creating a store
costs seconds, a run in an existing one well under a second."""

from __future__ import annotations

import numpy as np
import pytest

from learner.config import load_config
from learner.evaluation import stderr
from learner.trainer import TrainResult, train

NAV2D = "examples.nav2d:Nav2D"


def nav2d_config(algorithm: str, seed: int, iterations: int, tasks: int = 20, meta_batch: int = 6,
                 eval_tasks: int = 10, episodes: int = 6, **learner):
    """A seconds-long run: horizon 20, `episodes` per task in training and per held-out task and round (RL^2:
    trials of that many), in-process workers, CPU learner."""
    trial = learner.get("trial_episodes", 1) if algorithm == "rl2" else 1
    return load_config(data={
        "name": f"nav2d-{algorithm}",
        "fleet": {"family": NAV2D, "num_train_tasks": tasks, "num_test_tasks": max(10, eval_tasks), "horizon": 20},
        "workers": {"backend": "local", "num_workers": 1},
        "learner": {"algorithm": algorithm, "inner_lr": 0.1, "outer_lr": 0.01, "init_std": 0.5,
                    "hidden_sizes": [32, 32], "device": "cpu", "placement": "driver", **learner},
        "train": {"iterations": iterations, "meta_batch_size": meta_batch, "episodes_per_task": episodes * trial,
                  "seed": seed, "eval_every": 1000, "eval_tasks": eval_tasks, "eval_episodes": episodes * trial,
                  "eval_steps": [0, 1], "checkpoint_every": 1000},
        "tracking": {"experiment": "learning-checks"},
    })


def not_learned(gain, margin: float, most: float = 0.75) -> list[str]:
    """Why the paired per-task gains `gain` are not evidence of learning (empty: they are): the mean must
    exceed `margin` and 3 standard errors over tasks, and at least a fraction `most` of the tasks must gain.
    Noise alone clears the 3-stderr bar with probability ~0.002 over 40 tasks (~0.01 over 8; one-sided t);
    the settings of each check are tuned so that learning clears it at every seed tried."""
    gain = np.asarray(gain, np.float64)
    bar, improved = max(margin, 3 * stderr(gain)), float((gain > 0).mean())
    reasons = []
    if gain.mean() <= bar:
        reasons.append(f"mean gain {gain.mean():.2f} <= max(margin {margin}, 3 stderr {3 * stderr(gain):.2f})")
    if improved < most:
        reasons.append(f"only {improved:.0%} of {len(gain)} tasks gained, expected >= {most:.0%}")
    return reasons


def run(cfg, pool=None) -> TrainResult:
    """Train to the end (on `pool` if given); the MLflow run is closed (nothing is registered)."""
    result = train(cfg, pool=pool)
    result.tracker.close()
    return result


@pytest.fixture(scope="module")
def nav2d_store(tmp_path_factory):
    """One sqlite store (and working directory: checkpoints land there) for a module's runs."""
    home = tmp_path_factory.mktemp("learning-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
        yield home
