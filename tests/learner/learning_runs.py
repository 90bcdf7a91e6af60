"""Short training runs on the goal-hidden 2-D navigation plugin (examples/nav2d.py) through `train(cfg)`,
shared by the default suite's learning checks. One MLflow sqlite store per test module: creating a store
costs seconds, a run in an existing one well under a second."""

from __future__ import annotations

import pytest

from learner.config import load_config
from learner.trainer import TrainResult, train

NAV2D = "examples.nav2d:Nav2D"


def nav2d_config(algorithm: str, seed: int, iterations: int, tasks: int = 20, meta_batch: int = 6,
                 eval_tasks: int = 10, **learner):
    """A seconds-long run: horizon 20, 6 episodes per task, in-process workers, CPU learner."""
    trial = learner.get("trial_episodes", 1) if algorithm == "rl2" else 1
    return load_config(data={
        "name": f"nav2d-{algorithm}",
        "fleet": {"family": NAV2D, "num_train_tasks": tasks, "num_test_tasks": 10, "horizon": 20},
        "workers": {"backend": "local", "num_workers": 1},
        "learner": {"algorithm": algorithm, "inner_lr": 0.1, "outer_lr": 0.01, "init_std": 0.5,
                    "hidden_sizes": [32, 32], "device": "cpu", "placement": "driver", **learner},
        "train": {"iterations": iterations, "meta_batch_size": meta_batch, "episodes_per_task": 6 * trial,
                  "seed": seed, "eval_every": 1000, "eval_tasks": eval_tasks, "eval_episodes": 6 * trial,
                  "eval_steps": [0, 1], "checkpoint_every": 1000},
        "tracking": {"experiment": "learning-checks"},
    })


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
