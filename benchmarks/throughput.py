"""Env-steps/s of the rollout path, side by side: plain loop, LocalWorkerPool(1), RayWorkerPool(1|2).

Every mode serves the same requests (reach tasks on a KUKA iiwa, real pybullet envs, the batched
numpy Gaussian policy), so the ratios isolate what the pool abstraction and Ray cost:

- ``plain``: ``workers.rollout.rollout`` called in this process on N envs (no pool, no Ray);
- ``local-1``: ``LocalWorkerPool(1)``, the pool abstraction in process;
- ``ray-1`` / ``ray-2``: ``RayWorkerPool(k)`` on a private local Ray (127.0.0.1, ``num_cpus=2``).

Each mode gets one untimed warm-up call (env construction, actor start), then ``--repeats`` timed
calls. Timed calls are interleaved across modes (plain, local-1, ray-1, plain, ...), so load from
other processes hits every mode alike. ray-2 runs in a second phase, interleaved with the plain loop
again, because a 2-CPU Ray cannot hold three 1-CPU actors at once; every ratio divides by the plain
loop of its own phase. Steps are counted from the masks; the warm-up also checks that every mode
returns exactly the plain loop's arrays (same seeds, same batches).

Usage::

    python benchmarks/throughput.py                    # defaults: 8 requests x 10 episodes x 50 steps
    python benchmarks/throughput.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import fleet
from benchmarks import provenance
from fleet.robots import RobotSpec
from fleet.tasks import TaskDistribution
from policy import NumpyGaussianPolicy, PolicySpec, PolicyWeights
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool, WorkerPool
from workers.rollout import rollout

TARGET_PER_CORE = 0.8  # from the issue: a Ray pool should keep >= 0.8x the plain loop per core used
VERSION = "bench"
# A sampler serves requests and returns, per request, the arrays the comparison needs.
Sampler = Callable[[Sequence[SampleRequest]], list[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run (the CLI flags)."""

    envs: int = 10  # episodes per request (= envs stepped in lockstep)
    horizon: int = 50
    requests: int = 8  # tasks per sample call
    repeats: int = 3
    reference_seconds: float = 2.0  # how long each single-core reference loop runs


QUICK = Config(envs=2, horizon=5, requests=2, repeats=2, reference_seconds=0.2)


@dataclass
class ModeResult:
    """Timed calls of one mode."""

    label: str
    cores: int
    baseline: str  # the plain-loop mode timed in the same phase, which the ratios divide by
    steps_per_s: list[float] = field(default_factory=list)
    worker_seconds: list[float] = field(default_factory=list)  # inside rollout(), as workers report it
    identical_to_plain: bool | None = None

    def summary(self) -> dict:
        rates = self.steps_per_s
        return {**asdict(self), "mean": statistics.fmean(rates), "min": min(rates), "max": max(rates)}


# ------------------------------------------------------------------------------------ workload
def make_requests(cfg: Config, robot: RobotSpec, round_index: int) -> list[SampleRequest]:
    """The same tasks every round; seeds change per round (round 0 is the warm-up)."""
    tasks = TaskDistribution("reach", num_train=100, num_test=20, seed=0).sample(cfg.requests, "train")
    return [SampleRequest(task, robot, VERSION, cfg.envs, cfg.horizon, seed=1000 * round_index + i,
                          phase="train") for i, task in enumerate(tasks)]


def make_weights(robot: RobotSpec) -> PolicyWeights:
    """Freshly initialised learner weights, exported as the workers receive them."""
    import torch

    from learner.networks import GaussianMLPPolicy

    env = fleet.make_env("reach", robot, horizon=1)
    spec = PolicySpec(env.observation_space.shape[0], env.action_space.shape[0])
    env.close()
    torch.manual_seed(0)
    return GaussianMLPPolicy(spec).to_weights(VERSION)


class PlainLoop:
    """What one would write by hand: N envs in this process, `rollout` per request."""

    def __init__(self, weights: PolicyWeights):
        self.policy = NumpyGaussianPolicy(weights)
        self.envs: list = []
        self.key: tuple | None = None

    def __call__(self, requests: Sequence[SampleRequest]) -> list[dict[str, np.ndarray]]:
        out = []
        for r in requests:
            key = (r.task.family, r.robot, r.horizon)
            assert self.key in (None, key), "the plain loop keeps one env set: one family/robot/horizon"
            self.key = key
            while len(self.envs) < r.episodes:
                self.envs.append(fleet.make_env(r.task.family, r.robot, r.horizon))
            out.append(rollout(self.envs[: r.episodes], self.policy, r.task.params, r.horizon, r.seed,
                               r.deterministic))
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


def pool_sampler(pool: WorkerPool, weights: PolicyWeights) -> Sampler:
    def sample(requests: Sequence[SampleRequest]) -> list[dict[str, np.ndarray]]:
        batches = pool.sample(requests, {VERSION: weights})
        return [{"obs": b.obs, "rewards": b.rewards, "mask": b.mask,
                 "seconds": np.float64(b.stats.get("sample_seconds", np.nan))} for b in batches]

    return sample


# ----------------------------------------------------------------------------------- measuring
def same_arrays(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    if len(a) != len(b):
        return False
    keys = ("obs", "rewards", "mask")
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in keys)


def run_phase(samplers: dict[str, Sampler], results: dict[str, ModeResult], cfg: Config,
              robot: RobotSpec) -> None:
    """Warm every sampler up (checking it returns the plain loop's arrays), then time interleaved."""
    warmup = make_requests(cfg, robot, 0)
    reference = None
    for name, sample in samplers.items():
        provenance.log(f"warm-up {name}")
        out = sample(warmup)
        if name.startswith("plain"):
            reference = out
        elif reference is not None:
            results[name].identical_to_plain = same_arrays(reference, out)
    for round_index in range(1, cfg.repeats + 1):
        requests = make_requests(cfg, robot, round_index)
        for name, sample in samplers.items():
            start = time.perf_counter()
            out = sample(requests)
            elapsed = time.perf_counter() - start
            steps = sum(int(o["mask"].sum()) for o in out)
            results[name].steps_per_s.append(steps / elapsed)
            if "seconds" in out[0]:
                results[name].worker_seconds.append(float(sum(o["seconds"] for o in out)))
            provenance.log(f"round {round_index} {name}: {steps} steps in {elapsed:.3f} s = {steps / elapsed:,.0f}/s")


def reference_rates(robot: RobotSpec, seconds: float) -> dict[str, float]:
    """Single-core ceilings: raw physics (one client, no commands) and env.step without a policy.

    Zero actions leave IK converged at once; N(0, 1) actions (what a fresh policy with std 1 sends)
    make it iterate, so they are the fairer ceiling for the rollout modes.
    """
    import pybullet
    import pybullet_data

    client = pybullet.connect(pybullet.DIRECT)
    data = pybullet_data.getDataPath()
    pybullet.setGravity(0, 0, -9.81, physicsClientId=client)
    pybullet.loadURDF(os.path.join(data, "plane.urdf"), physicsClientId=client)
    pybullet.loadURDF(os.path.join(data, "kuka_iiwa/model.urdf"), useFixedBase=True, physicsClientId=client)
    raw = count_rate(lambda: pybullet.stepSimulation(physicsClientId=client), seconds)
    pybullet.disconnect(client)
    env = fleet.make_env("reach", robot, horizon=10**9)
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, np.float32)
    zero_rate = count_rate(lambda: env.step(zero), seconds)
    rng = np.random.default_rng(0)  # drawing an action costs ~1 us, noise next to a ~250 us step
    random_rate = count_rate(lambda: env.step(rng.standard_normal(zero.shape).astype(np.float32)), seconds)
    env.close()
    return {"raw_step_simulation_per_s": raw, "env_step_zero_action_per_s": zero_rate,
            "env_step_random_action_per_s": random_rate,
            "physics_substeps_per_env_step": getattr(env.unwrapped, "substeps", None)}


def count_rate(call: Callable[[], object], seconds: float, chunk: int = 200) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(chunk):
            call()
        count += chunk
    return count / (time.perf_counter() - start)


def measure(cfg: Config) -> dict:
    """Run every mode; return the JSON-able results."""
    from workers.ray_pool import RayWorkerPool, init_ray

    load_start, cpu_start = os.getloadavg(), cpu_times()
    robot = RobotSpec(robot_id="kuka-0")
    provenance.log("single-core reference loops")
    reference = reference_rates(robot, cfg.reference_seconds)
    weights = make_weights(robot)
    results = {name: ModeResult(label, cores, baseline) for name, label, cores, baseline in (
        ("plain-1", "plain loop (in process), phase 1", 1, "plain-1"),
        ("local-1", "LocalWorkerPool(1)", 1, "plain-1"),
        ("ray-1", "RayWorkerPool(1)", 1, "plain-1"),
        ("plain-2", "plain loop (in process), phase 2", 1, "plain-2"),
        ("ray-2", "RayWorkerPool(2)", 2, "plain-2"))}
    plain = PlainLoop(weights)
    init_ray(num_cpus=2)
    import ray

    local, ray_one = LocalWorkerPool(1), RayWorkerPool(1)
    try:
        run_phase({"plain-1": plain, "local-1": pool_sampler(local, weights),
                   "ray-1": pool_sampler(ray_one, weights)}, results, cfg, robot)
        ray_one.close()
        ray_two = RayWorkerPool(2)
        try:
            run_phase({"plain-2": plain, "ray-2": pool_sampler(ray_two, weights)}, results, cfg, robot)
        finally:
            ray_two.close()
    finally:
        ray_one.close()
        local.close()
        plain.close()
        ray.shutdown()
    machine = {"load_average_start": load_start, "load_average_end": os.getloadavg(),
               **cpu_shares(cpu_start, cpu_times())}
    return report_data(cfg, reference, results, machine)


def cpu_times() -> list[int] | None:
    """Machine-wide CPU jiffies from /proc/stat (user nice system idle iowait irq softirq steal)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def cpu_shares(start: list[int] | None, end: list[int] | None) -> dict[str, float | None]:
    """Busy and steal (hypervisor) percent of all cores over the run: how quiet the machine was."""
    if start is None or end is None or sum(end) <= sum(start):
        return {"cpu_busy_percent": None, "cpu_steal_percent": None}
    delta = [b - a for a, b in zip(start, end, strict=True)]
    total = sum(delta)
    return {"cpu_busy_percent": 100.0 * (total - delta[3] - delta[4]) / total,
            "cpu_steal_percent": 100.0 * delta[7] / total}


def report_data(cfg: Config, reference: dict, results: dict[str, ModeResult], machine: dict) -> dict:
    modes = {name: r.summary() for name, r in results.items()}
    for m in modes.values():
        plain = modes[m["baseline"]]["mean"]
        m["vs_plain"] = m["mean"] / plain
        m["per_core_used"] = m["mean"] / (m["cores"] * plain)
    return {
        "config": asdict(cfg),
        "machine": {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "python": platform.python_version(), **machine},
        "reference": reference,
        "modes": modes,
        "target_per_core": TARGET_PER_CORE,
    }


# ----------------------------------------------------------------------------------- reporting
def render(data: dict) -> str:
    """A markdown table plus one line per ratio."""
    cfg, modes, ref, machine = data["config"], data["modes"], data["reference"], data["machine"]
    lines = [
        f"workload: {cfg['requests']} requests x {cfg['envs']} episodes x {cfg['horizon']} steps per call "
        f"(reach, kuka_iiwa), {cfg['repeats']} timed calls per mode; machine: "
        f"{machine['usable_cpus']} usable cores, load average at start "
        f"{machine['load_average_start'][0]:.2f}, at end {machine['load_average_end'][0]:.2f}"
        f"{steal_note(machine)}",
        "",
        "| mode | cores used | env-steps/s mean | min | max | vs plain | per core used | same batches |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in modes.values():
        same = {None: "(reference)", True: "yes", False: "NO"}[m["identical_to_plain"]]
        lines.append(f"| {m['label']} | {m['cores']} | {m['mean']:,.0f} | {m['min']:,.0f} | {m['max']:,.0f} "
                     f"| {m['vs_plain']:.2f} | {m['per_core_used']:.2f} | {same} |")
    lines += ["", f"reference (1 core): raw stepSimulation {ref['raw_step_simulation_per_s']:,.0f}/s (kuka, "
              f"1 client, no commands); env.step alone ({ref['physics_substeps_per_env_step']} substeps + IK "
              f"each): {ref['env_step_zero_action_per_s']:,.0f}/s with zero actions, "
              f"{ref['env_step_random_action_per_s']:,.0f}/s with N(0, 1) actions", ""]
    for name in ("local-1", "ray-1", "ray-2"):
        lines.append(f"ratio {modes[name]['label']} / plain: {modes[name]['vs_plain']:.2f}")
    for name in ("ray-1", "ray-2"):
        per_core = modes[name]["per_core_used"]
        verdict = "met" if per_core >= TARGET_PER_CORE else "NOT met"
        lines.append(f"per core used {modes[name]['label']}: {per_core:.2f} "
                     f"(target >= {TARGET_PER_CORE}: {verdict})")
    if machine["usable_cpus"] <= 2:
        lines.append("note: with 2 Ray workers on a 2-core machine the driver, raylet and GCS share the "
                     "same cores as the actors, so ray-2 per core is a lower bound.")
    return "\n".join(lines)


def steal_note(machine: dict) -> str:
    if machine.get("cpu_steal_percent") is None:
        return ""
    return f", CPU steal {machine['cpu_steal_percent']:.0f}% over the run"


def parse_config(argv: Sequence[str] | None) -> tuple[Config, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=Config.envs, help="episodes per request")
    parser.add_argument("--horizon", type=int, default=Config.horizon, help="steps per episode")
    parser.add_argument("--requests", type=int, default=Config.requests, help="tasks per sample call")
    parser.add_argument("--repeats", type=int, default=Config.repeats, help="timed calls per mode")
    parser.add_argument("--json", metavar="OUT", help="where to write the raw JSON (default: results/throughput.json; "
                        "--quick writes only with --json)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        return QUICK, args.json
    if min(args.envs, args.horizon, args.requests, args.repeats) < 1:
        parser.error("--envs, --horizon, --requests and --repeats must be >= 1")
    cfg = Config(args.envs, args.horizon, args.requests, args.repeats)
    return cfg, args.json or provenance.default_path("throughput")


def main(argv: Sequence[str] | None = None) -> int:
    provenance.run("throughput.py", argv, parse_config, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
