"""End-to-end env steps/s, learning included: metafleet (MT-PPO and MAML, Ray workers) vs RLlib PPO.

All systems train on the same env and batch: metafleet's KUKA reach (``metafleet/Reach-v0``, end-effector
deltas through IK, a random hidden goal per episode), ``--meta-batch`` tasks x ``--episodes`` episodes x
``--horizon`` steps for support and again for query = 20,000 env steps per iteration by default, 5 PPO epochs
with one minibatch per epoch (metafleet's ``minibatches: 1``; ``--rllib-minibatch`` changes RLlib's), 64x64 tanh
networks, the same initial action std (metafleet's ``learner.init_std`` from the config; RLlib's free log-std
parameter is set to log(init_std) after the build and synced to its env runners).

- metafleet: ``configs/reach-mtppo.yaml`` and ``configs/reach-maml.yaml`` built as ``fleet train`` builds them
  (benchmarks/training_runs.py), ``--workers`` Ray rollout workers.
- RLlib (new API stack, the installed Ray's version; ``pip install -e ".[bench]"``): PPO with
  ``--rllib-runners`` env runners x ``--rllib-envs`` envs, the learner in the driver.

Every system gets one untimed warm-up iteration (start-up excluded); then ``--rounds`` rounds, each running
``--iterations`` iterations of every system in turn (the order rotates per round), so load from other processes
hits all alike. One shared local Ray (127.0.0.1) holds every system's actors; only one system works at a time.
A round's figure is its env steps / its wall time. The physics limit is raw ``stepSimulation``/s on one core
(KUKA + plane, measured in this run, before and after the rounds) / physics substeps per env step x rollout
processes: what the simulator alone would allow. Each env's limit (the rollout loop alone, per core, x rollout
processes: the most any system can collect here) and its physics while the arm moves (the env's own substeps
timed inside real steps; the raw limit is a robot at rest) are measured before and after the rounds too, and
averaged: the machine's speed drifts.

Usage::

    python benchmarks/vs_rllib.py                          # 3 rounds x 2 iterations, -> results/vs-rllib.json
    python benchmarks/vs_rllib.py --quick --json out.json  # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import gymnasium
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import fleet
from benchmarks import provenance, report
from benchmarks.training_runs import IterationFigures, TrainingJob, env_limit, moving_physics, physics_limit

SYSTEMS = {"mtppo": ("metafleet MT-PPO", "configs/reach-mtppo.yaml"),
           "maml": ("metafleet MAML", "configs/reach-maml.yaml"),
           "rllib": ("RLlib PPO", None),
           # learning overlapped with collection: the next iteration's first phase is sampled during the update
           "mtppo_overlap": ("metafleet MT-PPO, train.overlap", "configs/reach-mtppo.yaml"),
           # the same task with joint-position-delta actions (no IK per step): its fraction of the physics limit
           "maml_joint": ("metafleet MAML, joint-space actions", "configs/reach-joint.yaml"),
           "mtppo_joint": ("metafleet MT-PPO, joint-space actions", "configs/reach-joint.yaml")}
# A system's own overrides. The overlapped job never reaches a checkpoint or its last iteration (no prefetch there).
EXTRA = {"mtppo_overlap": ("train.overlap=true", "train.iterations=100000", "train.checkpoint_every=100000"),
         "mtppo_joint": ("learner.algorithm=mtppo",)}
FAMILY = {"maml_joint": "reach_joint", "mtppo_joint": "reach_joint"}  # the env each system steps (default reach)
RLLIB_ENV = "metafleet-reach-random-goal"


@dataclass(frozen=True)
class Config:
    """Sizes of one run (the CLI flags)."""

    rounds: int = 3
    iterations: int = 2  # per system per round
    meta_batch: int = 20
    episodes: int = 10  # per task per phase (support, query)
    horizon: int = 50
    workers: int = 2  # metafleet Ray rollout workers
    rllib_runners: int = 2
    rllib_envs: int = 10  # envs per RLlib env runner
    epochs: int = 5
    rllib_minibatch: int | None = None  # None: the whole batch, one minibatch per epoch
    physics_seconds: float = 2.0
    systems: tuple[str, ...] = ("mtppo", "maml", "rllib")

    @property
    def steps_per_iteration(self) -> int:
        return 2 * self.meta_batch * self.episodes * self.horizon


QUICK = Config(rounds=2, iterations=1, meta_batch=2, episodes=2, horizon=10, workers=1, rllib_runners=1,
               rllib_envs=2, epochs=1, physics_seconds=0.2)


# ------------------------------------------------------------------------------------ RLlib side
class RandomGoalReach(gymnasium.Wrapper):
    """``metafleet/Reach-v0`` with a goal drawn from the reach family's goal region at every reset."""

    def __init__(self, env_config: dict):
        super().__init__(gymnasium.make(fleet.REACH_ENV_ID, horizon=int(env_config.get("horizon", 50))))
        self.family = fleet.get_family("reach")
        self.goal_rng = np.random.default_rng(env_config.get("seed"))

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.goal_rng = np.random.default_rng(seed)
        return self.env.reset(seed=seed, options={**(options or {}), "task": self.family.sample_params(self.goal_rng)})


class RLlibPPO:
    """RLlib PPO on the same env and batch, one ``algo.train()`` per iteration."""

    label = SYSTEMS["rllib"][0]

    def __init__(self, cfg: Config, init_std: float):
        from ray.rllib.algorithms.ppo import PPOConfig
        from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
        from ray.tune.registry import register_env

        if __name__ != "__main__":  # imported (a test): env runners cannot import this script by name
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        register_env(RLLIB_ENV, RandomGoalReach)
        batch = cfg.steps_per_iteration
        config = (PPOConfig()
                  .environment(RLLIB_ENV, env_config={"horizon": cfg.horizon})
                  .env_runners(num_env_runners=cfg.rllib_runners, num_envs_per_env_runner=cfg.rllib_envs)
                  .learners(num_learners=0)
                  .training(train_batch_size_per_learner=batch, minibatch_size=cfg.rllib_minibatch or batch,
                            num_epochs=cfg.epochs, lr=1e-3, gamma=0.99, lambda_=1.0, clip_param=0.2)
                  .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh",
                                                             free_log_std=True, vf_share_layers=False))
                  .debugging(seed=0))
        self.algo = config.build_algo()
        self.init_log_std = set_log_std(self.algo, math.log(init_std))
        self._lifetime = 0

    def iterate(self) -> IterationFigures:
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

        started = time.perf_counter()
        result = self.algo.train()
        seconds = time.perf_counter() - started
        lifetime = int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME])
        steps, self._lifetime = lifetime - self._lifetime, lifetime
        return IterationFigures(steps, seconds, math.nan, math.nan)

    def close(self) -> None:
        self.algo.stop()


def set_log_std(algo, value: float) -> list[float]:
    """Set every free log-std parameter of the learner's module to `value`, sync the weights to the env
    runners, and return the log-stds the env runners now hold (checked: they must equal `value`)."""
    import torch

    def fill(learner) -> None:
        with torch.no_grad():
            for module in learner.module.values():
                for name, param in module.named_parameters():
                    if name.endswith("log_std"):
                        param.fill_(value)

    algo.learner_group.foreach_learner(fill)
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True,
                                       timeout_seconds=120.0)
    held = algo.env_runner_group.foreach_env_runner(
        lambda runner: [float(p.detach().mean()) for n, p in runner.module.named_parameters() if n.endswith("log_std")],
        local_env_runner=False)
    found = [v for values in held for v in values]
    if not found or any(abs(v - value) > 1e-6 for v in found):
        raise RuntimeError(f"RLlib env runners hold log-stds {found}, expected {value:.4f}; the initial action "
                           "scale would differ from metafleet's")
    return found


# ----------------------------------------------------------------------------------- measuring
def metafleet_job(name: str, cfg: Config) -> TrainingJob:
    overrides = ["workers.backend=ray", f"workers.num_workers={cfg.workers}", f"fleet.horizon={cfg.horizon}",
                 f"train.meta_batch_size={cfg.meta_batch}", f"train.episodes_per_task={cfg.episodes}",
                 f"learner.ppo_epochs={cfg.epochs}", "learner.minibatches=1", *EXTRA.get(name, ())]
    return TrainingJob(SYSTEMS[name][1], overrides, SYSTEMS[name][0]).__enter__()


def start_systems(cfg: Config) -> dict:
    """Every system built and warmed up by one untimed iteration (checked to have the configured batch)."""
    from workers.ray_connect import init_ray

    init_ray(num_cpus=len([s for s in cfg.systems if s != "rllib"]) * cfg.workers
             + ("rllib" in cfg.systems) * cfg.rllib_runners)
    systems: dict = {}
    try:
        for name in cfg.systems:
            provenance.log(f"starting {name}")
            if name == "rllib":
                systems[name] = RLlibPPO(cfg, reach_init_std())
            else:
                systems[name] = metafleet_job(name, cfg)
            warm = systems[name].iterate()
            if name != "rllib" and warm.env_steps != cfg.steps_per_iteration:
                raise RuntimeError(f"{name} collected {warm.env_steps} env steps in an iteration, expected "
                                   f"{cfg.steps_per_iteration}")
            provenance.log(f"warm-up {name}: {warm.env_steps} steps in {warm.seconds:.2f} s")
    except BaseException:
        close_all(systems)
        raise
    return systems


def reach_init_std() -> float:
    """metafleet's initial action std for reach (configs/reach-maml.yaml `learner.init_std`)."""
    from learner.config import load_config

    return load_config(Path(__file__).resolve().parents[1] / SYSTEMS["maml"][1]).learner.init_std


def close_all(systems: dict) -> None:
    """Close every system; a failing close is reported, not raised, so it cannot hide the first error."""
    for name, system in systems.items():
        try:
            system.close()
        except Exception as exc:  # keep closing the others
            provenance.log(f"closing {name} failed: {exc!r}")


def run_rounds(systems: dict, cfg: Config) -> dict[str, list[dict]]:
    """`cfg.rounds` rounds; in each, every system runs `cfg.iterations` iterations (order rotated per round)."""
    names = list(systems)
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(cfg.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            its = [systems[name].iterate() for _ in range(cfg.iterations)]
            steps, seconds = sum(i.env_steps for i in its), sum(i.seconds for i in its)
            rounds[name].append({"steps_per_s": steps / seconds, "env_steps": steps, "seconds": seconds,
                                 "iterations": [i.to_dict() for i in its]})
            provenance.log(f"round {r + 1} {name}: {steps} steps in {seconds:.2f} s = {steps / seconds:,.0f}/s")
    return rounds


def measure(cfg: Config) -> dict:
    """Physics limit, all systems' rounds, physics limit again; the JSON-able results."""
    import ray

    processes = min(max(cfg.workers, cfg.rllib_runners), len(os.sched_getaffinity(0)))
    families = sorted({FAMILY.get(name, "reach") for name in cfg.systems})
    before = physics_limit(processes, cfg.physics_seconds)
    envs_before = env_limits(families, processes, cfg)
    systems = start_systems(cfg)
    try:
        rounds = run_rounds(systems, cfg)
        init_log_std = systems["rllib"].init_log_std if "rllib" in systems else None
    finally:
        close_all(systems)
        ray.shutdown()
    after = physics_limit(processes, cfg.physics_seconds)
    envs = average_env_limits(envs_before, env_limits(families, processes, cfg))
    limit = (before["env_steps_per_s"] + after["env_steps_per_s"]) / 2
    return summarise(cfg, rounds, {"before": before, "after": after, "env_steps_per_s": limit,
                                   "rollout_processes": processes}, init_log_std, envs)


def env_limits(families: Sequence[str], processes: int, cfg: Config) -> dict[str, dict]:
    """Each family's env limit and its physics while the arm moves, measured now (see training_runs)."""
    out = {}
    for family in families:
        out[family] = env_limit(family, processes, cfg.physics_seconds, reach_init_std(), cfg.episodes, cfg.horizon)
        out[family]["moving_physics"] = moving_physics(family, cfg.physics_seconds, reach_init_std(), cfg.horizon)
    return out


def average_env_limits(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """The mean of the measurements before and after the rounds (the machine's speed drifts), both kept."""
    out = {}
    for family, b in before.items():
        a = after[family]
        per_core = (b["env_steps_per_s_per_core"] + a["env_steps_per_s_per_core"]) / 2
        moving = (b["moving_physics"]["step_simulation_per_s_per_core"]
                  + a["moving_physics"]["step_simulation_per_s_per_core"]) / 2
        out[family] = {**b, "env_steps_per_s_per_core": per_core, "env_steps_per_s": per_core * b["cores"],
                       "moving_physics": {**b["moving_physics"], "step_simulation_per_s_per_core": moving},
                       "before": b, "after": a}
    return out


def summarise(cfg: Config, rounds: dict[str, list[dict]], limit: dict, init_log_std, envs: dict | None = None) -> dict:
    """Per system: its rounds, mean, fraction of the physics limit and of its env's limit (the rollout loop alone
    on every rollout core, `training_runs.env_limit`); ratios to RLlib per round."""
    systems, envs = {}, envs or {}
    for name, per_round in rounds.items():
        rates = [r["steps_per_s"] for r in per_round]
        family = FAMILY.get(name, "reach")
        env = envs.get(family, {}).get("env_steps_per_s")
        its = [i for r in per_round for i in r["iterations"]]
        # metafleet only: how much of the wall time its workers stepped envs, and their rate while they did
        busy = [i.get("worker_busy_fraction", math.nan) for i in its]
        in_rollouts = (sum(i["env_steps"] for i in its) / sum(b * i["seconds"] for b, i in zip(busy, its))
                       if busy and all(math.isfinite(b) and b > 0 for b in busy) else None)
        systems[name] = {"label": SYSTEMS[name][0], "rounds": per_round, "steps_per_s": rates, "family": family,
                         "mean": statistics.fmean(rates), "fraction_of_physics_limit":
                         statistics.fmean(rates) / limit["env_steps_per_s"],
                         "fraction_of_env_limit": statistics.fmean(rates) / env if env else None,
                         "worker_busy_fraction": statistics.fmean(busy) if in_rollouts else None,
                         "steps_per_s_in_rollouts": in_rollouts}
    ratios = {}
    if "rllib" in rounds:
        for name in rounds.keys() - {"rllib"}:
            per_round = [a / b for a, b in zip(systems[name]["steps_per_s"], systems["rllib"]["steps_per_s"],
                                               strict=True)]
            ratios[f"{name}/rllib"] = {"per_round": per_round, "mean": statistics.fmean(per_round)}
    return {"config": {**asdict(cfg), "steps_per_iteration": cfg.steps_per_iteration},
            "rllib_initial_log_std": init_log_std, "physics_limit": limit, "env_limit": envs, "systems": systems,
            "ratios": ratios}


# ----------------------------------------------------------------------------------- reporting
def render(data: dict) -> str:
    """The markdown table (the same as in the docs: benchmarks/report.py renders it)."""
    return "\n".join(report.render_vs_rllib(data))


def parse_config(argv: Sequence[str] | None) -> tuple[Config, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Config()
    for flag, help_text in (("rounds", "interleaved rounds"), ("iterations", "timed iterations per system per round"),
                            ("meta-batch", "tasks per iteration"), ("episodes", "episodes per task per phase"),
                            ("horizon", "steps per episode"), ("workers", "metafleet Ray rollout workers"),
                            ("rllib-runners", "RLlib env runners"), ("rllib-envs", "envs per RLlib env runner"),
                            ("epochs", "PPO epochs per iteration (both systems)")):
        parser.add_argument(f"--{flag}", type=int, default=getattr(d, flag.replace("-", "_")), help=help_text)
    parser.add_argument("--rllib-minibatch", type=int, default=None, help="RLlib minibatch size (default: the "
                        "whole batch, as metafleet's one minibatch per epoch)")
    parser.add_argument("--physics-seconds", type=float, default=d.physics_seconds, help="each physics-limit loop")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(d.systems))
    parser.add_argument("--json", metavar="OUT", help="raw JSON path (default results/vs-rllib.json; --quick "
                        "writes only with --json)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (flags still apply)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else d
    given = {k: v for k, v in vars(args).items() if k not in ("json", "quick") and v != getattr(d, k, None)}
    cfg = replace(base, **{k: (tuple(v) if k == "systems" else v) for k, v in given.items()})
    if min(cfg.rounds, cfg.iterations, cfg.meta_batch, cfg.episodes, cfg.horizon, cfg.workers, cfg.rllib_runners,
           cfg.rllib_envs, cfg.epochs) < 1:
        parser.error("every count (--rounds, --iterations, --meta-batch, ...) must be >= 1")
    return cfg, args.json or (None if args.quick else str(provenance.default_path("vs-rllib")))


def main(argv: Sequence[str] | None = None) -> int:
    if "rllib" in parse_config(argv)[0].systems:
        try:
            import ray.rllib  # noqa: F401
        except ImportError as exc:
            print(f"vs_rllib.py: RLlib is not importable ({exc}); install the bench extra: pip install -e "
                  "\".[bench]\", or leave it out with --systems mtppo maml", file=sys.stderr)
            return 2
    provenance.run("vs_rllib.py", argv, parse_config, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
