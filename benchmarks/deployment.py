"""Deployment figures for a registered meta-policy, side by side in one run:

1. few-shot adaptation on simulated robots: held-out-task return before/after adaptation
   (`fleet adapt`'s protocol: N support episodes, K steps, fresh deterministic evaluation);
2. pull-to-first-action latency: `fleet pull` (download + sha256 + schema + atomic switch) ->
   `RobotRuntime` load -> robot reset -> first safe action, median over repeats.

    python benchmarks/deployment.py --model models:/reach-maml@candidate --tasks 5 --episodes 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # before mlflow is imported below
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance
from deploy.adapt import adapt_on_robot
from deploy.pull import pull
from deploy.registry import Registry
from deploy.runtime import RobotRuntime
from deploy.sim_robot import SimRobot
from learner.builder import task_distribution
from learner.config import load_config
from learner.evaluation import stderr


def adaptation_rows(uri: str, tasks: int, episodes: int, steps: int) -> list[dict]:
    manifest = Registry().load(uri).manifest
    held_out = task_distribution(load_config(data={"fleet": manifest["fleet"]})).tasks("test")[:tasks]
    rows = []
    for i, task in enumerate(held_out):
        result = adapt_on_robot(uri, f"sim:bench-{i}", task.params, episodes, steps, seed=i)
        rows.append({**result.to_dict(), "task_id": task.task_id})
    return rows


def pull_latency(uri: str, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per phase, one entry per repeat."""
    timings = {"pull": [], "load": [], "first_action": [], "total": []}
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp()) / "policy"
        robot = SimRobot()  # robot already running before the pull, as on a real machine
        try:
            start = time.perf_counter()
            pull(uri, out)
            pulled = time.perf_counter()
            runtime = RobotRuntime(out)
            loaded = time.perf_counter()
            runtime.act(robot.reset(seed=0))
            acted = time.perf_counter()
        finally:
            robot.close()
        for key, value in (("pull", pulled - start), ("load", loaded - pulled), ("first_action", acted - loaded),
                           ("total", acted - start)):
            timings[key].append(value * 1000.0)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/reach-maml@candidate")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=str(provenance.default_path("deployment")),
                        help="where to write the raw JSON (default: results/deployment.json)")
    prov = provenance.start("deployment.py", argv)
    args = parser.parse_args(argv)
    rows = adaptation_rows(args.model, args.tasks, args.episodes, args.steps)
    print(f"| held-out task | return before | return after {args.steps} step(s) | success before | success after |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task_id']} | {r['return_before']:.2f} | {r['return_after']:.2f} | "
              f"{r['success_before']:.2f} | {r['success_after']:.2f} |")
    before, after = [r["return_before"] for r in rows], [r["return_after"] for r in rows]
    print(f"| mean ± stderr | {np.mean(before):.2f} ± {stderr(before):.2f} | {np.mean(after):.2f} ± "
          f"{stderr(after):.2f} | | |")
    raw = pull_latency(args.model, args.repeats)
    latency = {k: statistics.median(v) for k, v in raw.items()}
    print(f"\npull-to-first-action, median of {args.repeats}: pull {latency['pull']:.0f} ms, runtime load "
          f"{latency['load']:.1f} ms, first action {latency['first_action']:.2f} ms, total {latency['total']:.0f} ms")
    if args.json:
        resolved = Registry().resolve(args.model)  # which version the alias pointed at, and its training tags
        data = {"model": args.model, "version": resolved.version, "model_tags": resolved.tags,
                "steps": args.steps, "episodes": args.episodes, "adaptation": rows, "latency_ms": latency,
                "latency_ms_per_repeat": raw}
        provenance.write(args.json, data, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
