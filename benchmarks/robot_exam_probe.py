"""Validity probe of the robot-adaptation exams: does knowing the robot matter? Measured without training.

An exam family (``robot_reach``, ``robot_run``) plus a fleet file is only a valid exam if a controller told the
robot's parameters clearly beats the same controller assuming the nominal robot, on the held-out robots:

- ``robot_reach``: a damped-least-squares joint-space controller towards the (observed) goal. The *oracle* divides
  each joint's desired step by that joint's gain and leaves failed joints out of the Jacobian; the *agnostic* one
  assumes every gain is 1. Success (the family's: within 5 cm at the last step) and return per held-out robot.
- ``robot_run``: no scripted controller runs the cheetah at a set speed, so the probe measures what the gains do
  to a fixed open-loop sinusoid gait: the agnostic gait is sent as is; the oracle gait divides each joint's action
  by its gain (undoing reversals and weak motors; a failed joint is beyond help). Speed per held-out robot.

Usage::

    python benchmarks/robot_exam_probe.py                       # both exams, their fleet files, held-out robots
    python benchmarks/robot_exam_probe.py --family robot_reach --fleet configs/fleets/kuka-gains.yaml --goals 4

Writes ``results/robot-exam-probe.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fleet  # noqa: E402
from fleet.fleetspec import load_fleet_file  # noqa: E402
from fleet.robots import RobotSpec  # noqa: E402
from fleet.tasks import TaskDistribution  # noqa: E402

DEFAULT_FLEETS = {"robot_reach": "configs/fleets/kuka-gains.yaml", "robot_run": "configs/fleets/cheetah-gains.yaml"}
DLS_DAMPING = 0.05
# The open-loop cheetah gait: action_j(t) = offset_j + amplitude_j * sin(2 pi hz t + phase_j), joints bthigh, bshin,
# bfoot, fthigh, fshin, ffoot. The best of 800 random draws (seed 2: hz in [1, 4], amplitudes [0.3, 0.8], phases,
# offsets ±0.2) scored by its worst speed over 3 reset seeds of the nominal cheetah and one all-gains-0.8 cheetah
# driven by the compensated gait (1.46-1.95 m/s over steps 40-100: robust, not a one-seed fluke). With the constants
# rounded as below it runs the nominal cheetah at 1.82 m/s (mean of 3 reset seeds: the probe's nominal_speed).
GAIT_HZ = 2.241
GAIT_AMPLITUDE = (0.435, 0.692, 0.377, 0.548, 0.521, 0.793)
GAIT_PHASE = (0.693, 3.553, 1.393, 5.972, 0.790, 5.758)
GAIT_OFFSET = (0.058, -0.124, -0.034, -0.090, -0.009, 0.130)
GAIT_SEEDS = 3  # reset seeds per robot and gait
SETTLE_STEPS = 40  # run speed = the mean over the steps after these (the gait's start-up transient)


def reach_action(env: Any, obs: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """One DLS step towards the goal for a robot believed to have ``gains``: the desired joint step divided by each
    joint's gain, failed joints (gain 0) left out of the Jacobian and sent 0."""
    base = env.unwrapped
    dofs = base._ik_dofs  # calculateJacobian wants every movable joint (the panda's fingers too)
    positions = [state[0] for state in base._bullet.getJointStates(base._body, dofs)]
    zeros = [0.0] * len(dofs)
    linear, _ = base._bullet.calculateJacobian(base._body, base._model.ee_link, [0.0, 0.0, 0.0], positions,
                                               zeros, zeros)
    alive = gains != 0.0
    jac = np.asarray(linear)[:, [dofs.index(j) for j in base._joints]] * alive
    error = obs[base.obs_slices["goal_delta"]].astype(np.float64)
    dq = jac.T @ np.linalg.solve(jac @ jac.T + DLS_DAMPING**2 * np.eye(3), error)
    safe = np.where(alive, gains, 1.0)
    return np.clip(np.where(alive, dq / (safe * base.max_joint_delta), 0.0), -1.0, 1.0).astype(np.float32)


def run_reach(env: Any, goal: list[float], gains: np.ndarray, seed: int) -> tuple[bool, float]:
    """One episode of the DLS controller believing ``gains``: (success at the last step, return)."""
    obs, info = env.reset(seed=seed, options={"task": {"goal": goal}})
    total = 0.0
    for _ in range(env.unwrapped.horizon):
        obs, reward, terminated, truncated, info = env.step(reach_action(env, obs, gains))
        total += reward
        if terminated or truncated:
            break
    return bool(info["success"]), total


def gait_action(t: int, dt: float, gains: np.ndarray) -> np.ndarray:
    """The open-loop gait at step ``t``, divided by the believed ``gains`` (failed joints: the plain gait)."""
    phase = 2 * np.pi * GAIT_HZ * t * dt + np.asarray(GAIT_PHASE)
    action = np.asarray(GAIT_OFFSET) + np.asarray(GAIT_AMPLITUDE) * np.sin(phase)
    safe = np.where(gains != 0.0, gains, 1.0)
    return np.clip(action / safe, -1.0, 1.0).astype(np.float32)


def run_gait(env: Any, gains: np.ndarray, seed: int) -> tuple[float, float]:
    """One episode of the gait believing ``gains``: (mean forward speed after ``SETTLE_STEPS``, return)."""
    env.reset(seed=seed, options={"task": {"variant": 0.5}})
    speeds, total = [], 0.0
    dt = env.unwrapped.action_dt
    for t in range(env.unwrapped.horizon):
        _, reward, terminated, truncated, info = env.step(gait_action(t, dt, gains))
        speeds.append(info["forward_velocity"])
        total += reward
        if terminated or truncated:
            break
    return float(np.mean(speeds[SETTLE_STEPS:] or speeds)), total


def probe_robot(family: str, robot: RobotSpec, goals: list[list[float]], horizon: int) -> dict[str, Any]:
    """Oracle vs agnostic on one robot: per-controller success/return (reach) or speed/return (run)."""
    env = fleet.make_env(family, robot, horizon)
    true_gains = np.asarray(robot.gains)
    believed = {"oracle": true_gains, "agnostic": np.ones_like(true_gains)}
    row: dict[str, Any] = {"robot_id": robot.robot_id, "joint_gains": list(robot.gains)}
    try:
        for name, gains in believed.items():
            if family == "robot_reach":
                runs = [run_reach(env, goal, gains, seed=i) for i, goal in enumerate(goals)]
                row[name] = {"success": float(np.mean([s for s, _ in runs])),
                             "return": float(np.mean([r for _, r in runs]))}
            else:  # the gait is open loop and the cheetah chaotic: average a few reset seeds
                runs = [run_gait(env, gains, seed=i) for i in range(GAIT_SEEDS)]
                row[name] = {"speed": float(np.mean([v for v, _ in runs])),
                             "return": float(np.mean([r for _, r in runs]))}
    finally:
        env.close()
    return row


def summarise(family: str, rows: list[dict[str, Any]], nominal: dict[str, Any] | None) -> dict[str, Any]:
    """Means over robots, and the exam's validity verdict."""
    out: dict[str, Any] = {}
    for name in ("oracle", "agnostic"):
        out[name] = {key: float(np.mean([r[name][key] for r in rows])) for key in rows[0][name]}
    if family == "robot_reach":
        gap = out["oracle"]["success"] - out["agnostic"]["success"]
        out["success_gap"] = gap
        out["valid"] = out["oracle"]["success"] >= 0.8 and gap >= 0.3
    else:
        base = nominal["agnostic"]["speed"] if nominal else float("nan")
        out["nominal_speed"] = base
        out["agnostic_speed_loss"] = base - out["agnostic"]["speed"]
        out["oracle_speed_loss"] = base - out["oracle"]["speed"]
        slow = [r for r in rows if r["agnostic"]["speed"] < 0.5 * base]
        out["agnostic_below_half_nominal"] = len(slow) / len(rows)
    return out


def probe(family: str, fleet_file: str, split: str = "test", goals: int = 16, horizon: int | None = None,
          max_robots: int | None = None) -> dict[str, Any]:
    """Probe ``family`` on the ``split`` robots of ``fleet_file``; returns the JSON-able report."""
    start = time.perf_counter()
    fleet_spec = load_fleet_file(ROOT / fleet_file if not Path(fleet_file).is_absolute() else fleet_file)
    robots = list(fleet_spec.test if split == "test" else fleet_spec.train)[:max_robots]
    horizon = horizon or (50 if family == "robot_reach" else 100)
    tasks = TaskDistribution(family, num_train=1, num_test=goals, seed=0).test_tasks
    goal_list = [t.params["goal"] for t in tasks] if family == "robot_reach" else []
    rows = [probe_robot(family, robot, goal_list, horizon) for robot in robots]
    nominal = None
    if family == "robot_run":
        nominal = probe_robot(family, RobotSpec(robot_id="nominal", model=robots[0].model), [], horizon)
    return {"family": family, "fleet_file": fleet_file, "split": split, "robots": len(rows),
            "goals_per_robot": len(goal_list), "horizon": horizon, "summary": summarise(family, rows, nominal),
            "nominal": nominal, "per_robot": rows, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(DEFAULT_FLEETS), action="append",
                        help="exam family (repeatable; default: both)")
    parser.add_argument("--fleet", help="fleet file (default: the family's configs/fleets file)")
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--goals", type=int, default=16, help="held-out goals per robot (robot_reach)")
    parser.add_argument("--horizon", type=int)
    parser.add_argument("--max-robots", type=int)
    parser.add_argument("--out", default="results/robot-exam-probe.json")
    args = parser.parse_args(argv)
    families = args.family or sorted(DEFAULT_FLEETS)
    reports = [probe(name, args.fleet or DEFAULT_FLEETS[name], args.split, args.goals, args.horizon, args.max_robots)
               for name in families]
    for report in reports:
        print(f"{report['family']} on {report['robots']} {report['split']} robots of {report['fleet_file']} "
              f"({report['seconds']} s): {json.dumps(report['summary'])}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"reports": reports}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
