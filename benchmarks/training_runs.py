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
    # the trainer's `learner_blocked_fraction` x the iteration: the part of `update()` no prefetched phase covered
    # (`train.overlap`) plus the learner's plan code between phases; nan when the trainer did not report it
    blocked_seconds: float = float("nan")
    # the trainer's `worker_busy_fraction`: the share of the iteration the average worker spent inside rollouts
    worker_busy_fraction: float = float("nan")

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
        blocked = float(metrics.get("learner_blocked_fraction", float("nan"))) * float(metrics["iteration_seconds"])
        return IterationFigures(steps, seconds, float(metrics["sample_seconds"]), float(metrics["learn_seconds"]),
                                blocked, float(metrics.get("worker_busy_fraction", float("nan"))))


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


def env_limit(family: str, cores: int, seconds: float, init_std: float, episodes: int = 10, horizon: int = 50,
              robot_id: str = "kuka-0") -> dict:
    """The rollout loop alone on one core: `episodes` envs of `family` stepped in lockstep by a freshly initialised
    policy (action std `init_std`, as the systems start), one task after another, no pool, no Ray, no learner;
    env steps per second of this process's CPU time, and that rate x `cores`: the most any system can collect
    on this machine with this env (an action's cost depends on it: IK work grows with the commanded move)."""
    import numpy as np
    import torch

    import fleet
    from fleet.tasks import TaskDistribution
    from learner.networks import GaussianMLPPolicy
    from policy import NumpyGaussianPolicy, PolicySpec
    from workers.rollout import rollout

    robot = fleet.RobotSpec(robot_id=robot_id)
    envs = [fleet.make_env(family, robot, horizon) for _ in range(episodes)]
    try:
        spec = PolicySpec(envs[0].observation_space.shape[0], envs[0].action_space.shape[0])
        torch.manual_seed(0)
        policy = NumpyGaussianPolicy(GaussianMLPPolicy(spec, init_std=init_std).to_weights("limit"))
        tasks = TaskDistribution(family, num_train=50, num_test=1, seed=0).tasks("train")
        steps, i, start = 0, 0, time.process_time()
        while time.process_time() - start < seconds:
            out = rollout(envs, policy, tasks[i % len(tasks)].params, horizon, seed=i)
            steps, i = steps + int(np.asarray(out["mask"]).sum()), i + 1
        rate = steps / (time.process_time() - start)
    finally:
        for env in envs:
            env.close()
    return {"family": family, "env_steps_per_s_per_core": rate, "cores": cores, "env_steps_per_s": rate * cores,
            "init_std": init_std, "episodes_per_rollout": episodes}


def moving_physics(family: str, seconds: float, init_std: float, horizon: int = 50, robot_id: str = "kuka-0") -> dict:
    """``stepSimulation``/s on one core of `family`'s own physics client while the robot moves: the env is stepped
    with Gaussian actions of std `init_std` (a fresh policy's) and only its physics substeps are timed (CPU time).
    The physics limit is defined by a robot at rest with no motor commands; a moving arm under position control
    costs more per substep, which caps what any env of the family can reach of that limit."""
    import numpy as np

    import fleet

    env = fleet.make_env(family, fleet.RobotSpec(robot_id=robot_id), horizon)
    sim = env.unwrapped
    step_sim, spent, count = sim._step_sim, [0.0], [0]  # the env's bound stepSimulation (benchmark-only wrap)

    def timed() -> None:
        start = time.process_time()
        step_sim()
        spent[0] += time.process_time() - start
        count[0] += 1

    sim._step_sim = timed
    rng = np.random.default_rng(0)
    try:
        env.reset(seed=0)
        start = time.process_time()
        while time.process_time() - start < seconds:
            action = np.clip(rng.normal(0.0, init_std, env.action_space.shape), -1.0, 1.0)
            _, _, terminated, truncated, _ = env.step(action.astype(np.float32))
            if terminated or truncated:
                env.reset()
    finally:
        sim._step_sim = step_sim
        env.close()
    return {"family": family, "step_simulation_per_s_per_core": count[0] / spent[0], "substeps": count[0],
            "init_std": init_std}
