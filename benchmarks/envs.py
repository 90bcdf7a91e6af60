"""Env-steps/s of every task family on every robot it supports, next to raw ``stepSimulation``/s.

For each registered family x compatible robot model (``robot_kinds`` against the model's ``kind``), in
this one process (one core):

- **env steps/s**: ``fleet.make_env`` (so the guard wrapper is on), reset to a sampled task, then
  uniform random actions from the action box for ``--seconds``; an episode end (or a guard trip) resets
  the env to a fresh task, as a rollout would, and the resets count in the time.
- **without guard**: the same, from the family's own ``make_env`` (what the guard costs);
- **raw steps/s**: a fresh DIRECT client with the plane and the same robot model (fixed base for arms,
  free base otherwise), ``stepSimulation`` with no commands and no reads, for ``--seconds``.
- **ratio** = env / raw; **physics ratio** = env x substeps / raw (how much of the simulator's raw rate
  an env step keeps once its own substeps are counted). The target from the issue is ratio >= 0.5 for
  the arms.
- **action**: an arm family's action mode: ``ee`` (reach, push: one IK solve per step) or ``joint``
  (reach_joint, push_joint: joint position deltas, no IK), side by side on the same robot.

Rates are per second of this process's CPU time (``time.process_time``: pybullet DIRECT runs
in-process), so they are one core's rate even when other processes share the machine. Measurements
are interleaved per pair (env, raw, env, raw, ...; ``--repeats`` each, median kept) so machine load
hits both alike. Prints a markdown table; ``--json OUT`` stores everything.

Usage::

    python benchmarks/envs.py                      # 2 s per measurement, 3 repeats
    python benchmarks/envs.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import fleet
from benchmarks import provenance
from fleet.envs.quiet import quiet_stdout
from fleet.robots import ROBOT_MODELS, RobotModel, RobotSpec
from fleet.tasks import FAMILIES

ARM_TARGET = 0.5


@dataclass
class Row:
    """One family x robot measurement (medians over repeats)."""

    family: str
    robot: str
    kind: str
    substeps: int
    env_steps_per_s: float
    unguarded_steps_per_s: float
    raw_steps_per_s: float
    guard_trips: int
    runs: dict[str, list[float]] = field(default_factory=dict)  # every repeat's rate, per measurement
    action_mode: str = "n/a"  # an arm family's "ee" (IK per step) or "joint" (reach vs reach_joint, ...)

    @property
    def ratio(self) -> float:
        return self.env_steps_per_s / self.raw_steps_per_s

    @property
    def physics_ratio(self) -> float:
        return self.ratio * self.substeps


def pairs() -> list[tuple[str, RobotModel]]:
    """Every (family, robot model) whose kinds match."""
    out = []
    for name, family in FAMILIES.items():
        kinds = getattr(family, "robot_kinds", None)
        out += [(name, model) for model in ROBOT_MODELS.values() if kinds is None or model.kind in kinds]
    return out


def substeps_of(env) -> int:
    base = env.unwrapped
    physics = getattr(base, "physics", None)
    return int(getattr(base, "substeps", None) or getattr(physics, "substeps", 1))


def env_rate(family: str, model: RobotModel, seconds: float, seed: int, guard: bool = True) -> tuple[float, int, int]:
    """(env steps/s with random actions, guard trips, substeps per step); ``guard=False`` skips the wrapper."""
    fam = fleet.get_family(family)
    robot = RobotSpec(robot_id="bench", model=model.name)
    env = fleet.make_env(family, robot, horizon=100) if guard else fam.make_env(robot, 100)
    rng = np.random.default_rng(seed)
    try:
        env.action_space.seed(seed)
        env.reset(seed=seed, options={"task": fam.sample_params(rng)})
        steps, start = 0, time.process_time()
        while time.process_time() - start < seconds:
            for _ in range(50):
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                steps += 1
                if terminated or truncated:
                    env.reset(options={"task": fam.sample_params(rng)})
        elapsed = time.process_time() - start
        return steps / elapsed, getattr(env, "trips", 0), substeps_of(env)
    finally:
        env.close()


def raw_rate(model: RobotModel, seconds: float) -> float:
    """Raw ``stepSimulation``/s with the plane and this robot, no commands."""
    with quiet_stdout():
        import pybullet
        import pybullet_data
        from pybullet_utils import bullet_client

        client = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
    try:
        data = pybullet_data.getDataPath()
        client.setGravity(0, 0, -9.81)
        client.loadURDF(os.path.join(data, "plane.urdf"))
        path = os.path.join(data, model.urdf)
        if model.loader == "mjcf":
            client.loadMJCF(path)
        else:
            client.loadURDF(path, basePosition=[0, 0, 0 if model.kind == "arm" else 0.4],
                            useFixedBase=model.kind == "arm")
        step = client.stepSimulation
        steps, start = 0, time.process_time()
        while time.process_time() - start < seconds:
            for _ in range(200):
                step()
            steps += 200
        return steps / (time.process_time() - start)
    finally:
        client.disconnect()


def measure(seconds: float, repeats: int, only: str | None = None) -> list[Row]:
    rows = []
    for family, model in pairs():
        if only and only not in (family, model.name):
            continue
        env_runs, bare_runs, raw_runs, trips, substeps = [], [], [], 0, 1
        for r in range(repeats):
            rate, tripped, substeps = env_rate(family, model, seconds, seed=r)
            env_runs.append(rate)
            trips += tripped
            bare_runs.append(env_rate(family, model, seconds, seed=r, guard=False)[0])
            raw_runs.append(raw_rate(model, seconds))
        rows.append(Row(family, model.name, model.kind, substeps, statistics.median(env_runs),
                        statistics.median(bare_runs), statistics.median(raw_runs), trips,
                        {"env": env_runs, "without_guard": bare_runs, "raw": raw_runs},
                        action_mode=getattr(fleet.get_family(family), "action_mode", "n/a")))
        print(f"  measured {family} on {model.name}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| family | robot | kind | action | substeps | env steps/s (guard on) | without guard | "
             "raw stepSimulation/s | ratio | physics ratio | guard trips | arm target >= 0.5x |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        target = ("yes" if r.ratio >= ARM_TARGET else "no") if r.kind == "arm" else "n/a"
        lines.append(f"| {r.family} | {r.robot} | {r.kind} | {r.action_mode} | {r.substeps} | "
                     f"{r.env_steps_per_s:,.0f} | {r.unguarded_steps_per_s:,.0f} | "
                     f"{r.raw_steps_per_s:,.0f} | {r.ratio:.2f} | {r.physics_ratio:.2f} | {r.guard_trips} | {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved env/raw measurements per pair")
    parser.add_argument("--only", help="one family or robot model")
    parser.add_argument("--quick", action="store_true", help="0.3 s, 1 repeat (smoke test)")
    parser.add_argument("--json", dest="json_out", help="where to write the raw JSON (default: results/envs.json; "
                        "--quick writes only with --json)")
    prov = provenance.start("envs.py", argv)
    args = parser.parse_args(argv)
    json_out = args.json_out or (None if args.quick else provenance.default_path("envs"))
    seconds, repeats = (0.3, 1) if args.quick else (args.seconds, args.repeats)
    load_before = os.getloadavg()
    rows = measure(seconds, repeats, args.only)
    load_after = os.getloadavg()
    print(table(rows))
    print(f"\none core, {seconds:g} s x {repeats} per measurement (median); load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}; python {platform.python_version()}")
    if json_out:
        data = {"rows": [{**asdict(r), "ratio": r.ratio, "physics_ratio": r.physics_ratio} for r in rows],
                "seconds": seconds, "repeats": repeats, "load_average": [load_before[0], load_after[0]]}
        provenance.write(json_out, data, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
