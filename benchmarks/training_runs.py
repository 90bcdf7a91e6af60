"""Metafleet training jobs for the throughput benchmarks (vs_rllib.py, scaling.py, learner_speed.py).

A job is built the way ``fleet train`` builds it (``learner.builder.build``: spaces, MLflow tracker, pool,
learner; its MLflow run is ended at once) and then driven one ``Trainer.iterate()`` at a time, so a script
can time single iterations, interleave several jobs and keep start-up (actor launch, env construction) out of
its figures. Tracking goes
to a throw-away sqlite store and checkpoints to a temporary folder: a benchmark leaves nothing behind.

    with TrainingJob("configs/reach-maml.yaml", ["train.meta_batch_size=4"]) as job:
        job.iterate()                       # warm-up: not timed
        figures = job.iterate()             # IterationFigures(env_steps, seconds, sample_seconds, ...)
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class IterationFigures:
    """One meta-iteration, end to end: its env steps, its wall time, and the trainer's split of it into
    collection (``sample_seconds``: every phase, with MAML's inner adaptation between support and query)
    and the learner's update (``learn_seconds``: the time the workers sit idle waiting for new weights)."""

    env_steps: int
    seconds: float
    sample_seconds: float
    learn_seconds: float

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "steps_per_s": self.steps_per_s}


def gradient_steps_per_update(cfg) -> int:
    """Optimiser steps one ``update()`` takes under `cfg` (a learner.config.Config): PEARL runs
    ``gradient_steps``; the PPO-family learners run ``ppo_epochs`` epochs of ``minibatches`` task
    minibatches each (learner/base.py ``minibatch_epochs``), one Adam step per minibatch."""
    lc = cfg.learner
    if lc.algorithm == "pearl":
        return lc.gradient_steps
    return lc.ppo_epochs * min(lc.minibatches, cfg.train.meta_batch_size)


class TrainingJob:
    """A metafleet job from a config file plus ``--set``-style overrides, held open for timed iterations."""

    def __init__(self, config: str | Path, overrides: Sequence[str] = (), label: str | None = None):
        from learner.config import load_config

        self.workdir = Path(tempfile.mkdtemp(prefix="metafleet-bench-"))
        fixed = ["train.eval_every=0", f"tracking.checkpoint_dir={self.workdir / 'checkpoints'}",
                 f"tracking.tracking_uri=sqlite:///{self.workdir / 'mlflow.db'}"]
        path = Path(config)
        self.cfg = load_config(path if path.is_absolute() or path.exists() else ROOT / path, [*fixed, *overrides])
        self.label = label or self.cfg.name
        self.trainer = None
        self._stack = contextlib.ExitStack()
        self._steps = 0

    def __enter__(self) -> TrainingJob:
        from learner.builder import build
        from learner.trainer import Trainer

        try:
            run = self._stack.enter_context(build(self.cfg))
            # Nothing is logged (iterate() does not track), and MLflow holds one active run per process: end
            # this one now so that several jobs can be open side by side.
            run.tracker.close()
            self.trainer = Trainer(self.cfg, run.pool, run.tracker, run.spec, run.spaces, learner=run.learner)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the learner, the pool and the tracker; remove the temporary folder."""
        try:
            self._stack.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def pool(self):
        return self.trainer.pool

    def iterate(self) -> IterationFigures:
        """One meta-iteration (collection + update), timed from outside the trainer."""
        started = time.perf_counter()
        metrics = self.trainer.iterate()
        seconds = time.perf_counter() - started
        steps, self._steps = int(metrics["env_steps"]) - self._steps, int(metrics["env_steps"])
        return IterationFigures(steps, seconds, float(metrics["sample_seconds"]), float(metrics["learn_seconds"]))


def physics_limit(cores: int, seconds: float, robot_id: str = "kuka-0") -> dict:
    """Raw ``stepSimulation``/s on one core for the KUKA (plane + arm, one DIRECT client, no commands),
    measured now, and what it allows in env steps/s: raw / substeps per action x `cores`."""
    import os

    import pybullet
    import pybullet_data

    import fleet

    client = pybullet.connect(pybullet.DIRECT)
    data = pybullet_data.getDataPath()
    try:
        pybullet.setGravity(0, 0, -9.81, physicsClientId=client)
        pybullet.loadURDF(os.path.join(data, "plane.urdf"), physicsClientId=client)
        pybullet.loadURDF(os.path.join(data, "kuka_iiwa/model.urdf"), useFixedBase=True, physicsClientId=client)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(200):
                pybullet.stepSimulation(physicsClientId=client)
            count += 200
        raw = count / (time.perf_counter() - start)
    finally:
        pybullet.disconnect(client)
    env = fleet.make_env("reach", fleet.RobotSpec(robot_id=robot_id), horizon=50)
    substeps = int(env.unwrapped.substeps)
    env.close()
    return {"raw_step_simulation_per_s_per_core": raw, "substeps_per_env_step": substeps, "cores": cores,
            "env_steps_per_s": raw / substeps * cores}
