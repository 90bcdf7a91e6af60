"""The robot-adaptation exams: does knowing the robot help, and does RMA recover it from the robot's own steps?

Each exam (`EXAMS`: a config whose held-out robots differ from the training fleet in hidden motor gains) is trained
with its learner and yardsticks in one `fleet train` run per seed; the held-out table of every run (RMA, the oracle
told the robot's parameters, the robot-agnostic MT-PPO over the same fleet, from-scratch) goes to
results/robot-exams.json with each held-out task's robot id, so `benchmarks/report.py` can render the exam table,
the validity rule (oracle - robot-agnostic) and the worst held-out robots' own rows.

    python benchmarks/robot_exams.py --exams arm --seeds 0 1 2
    python benchmarks/robot_exams.py --exams cheetah --seeds 0 --merge     # add to the same file
    python benchmarks/robot_exams.py --plot docs/img/robot-exams.png       # the figure, from the JSON only
    python benchmarks/robot_exams.py --exams arm --seeds 0 1 2 --sweep     # the seeds as one `fleet sweep` (Ray Tune,
                                                                           # resumable, trials in parallel on a cluster)

The JSON is rewritten after every run (a crash keeps the finished ones).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance
from learner.builder import fleet_of
from learner.config import load_config
from learner.trainer import train

ROOT = Path(__file__).resolve().parents[1]
EXAMS = {"arm": "configs/robots-arm.yaml", "cheetah": "configs/robots-cheetah.yaml",
         "arm-belief": "configs/robots-arm-belief.yaml"}  # the arm exam with the belief learner (dynamics model)
OUT = ROOT / "results" / "robot-exams.json"


def figures(result) -> dict:
    """Per-task returns and successes per round of an EvalResult, JSON keys."""
    return {"returns": {str(k): v for k, v in result.returns.items()},
            "successes": {str(k): v for k, v in result.successes.items()}}


def held_out_robots(cfg, count: int) -> list[str]:
    """The robot id of each held-out task, as the trainer pairs them (fleet.eval_robots or every test robot)."""
    named = cfg.fleet.eval_robots
    if named:
        return [named[i % len(named)] for i in range(count)]
    return [r.robot_id for r in fleet_of(cfg).eval_robots(count)]


def run_one(exam: str, seed: int, extra: list[str], prov: dict) -> dict:
    """Train one exam at one seed; its record: every model's per-task figures, robots, budget, time, provenance."""
    overrides = [f"train.seed={seed}", *extra]
    cfg = load_config(ROOT / EXAMS[exam], overrides)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    result = train(cfg)
    result.tracker.close()
    final = result.final_eval
    models = {cfg.learner.algorithm: figures(final), **{n: figures(r) for n, r in result.baselines.items()}}
    machine = prov["machine"]
    return {"exam": exam, "seed": seed, "config": EXAMS[exam], "overrides": overrides,
            "method": cfg.learner.algorithm, "family": cfg.fleet.family, "steps": list(final.steps),
            "task_ids": list(final.task_ids), "robots": held_out_robots(cfg, len(final.task_ids)), "models": models,
            "env_steps": result.env_steps, "iterations": result.iterations,
            "train_seconds": round(result.wall_seconds, 1), "wall_seconds": round(time.perf_counter() - started, 1),
            "provenance": {"command": prov["command"], "commit": prov["commit"], "date": date,
                           "load_average_start": prov["load_average_start"],
                           "machine": {"cpu_count": machine["cpu_count"], "cpu_model": machine["cpu_model"],
                                       "cuda_device": provenance.cuda_device()}}}


def load(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("runs", []))


def from_sweep(exam: str, trial: dict, prov: dict) -> dict:
    """A `fleet sweep` trial's record (deploy/sweep.py `trial_record`) as this file's run record."""
    models = {trial["algorithm"]: {"returns": trial["returns"], "successes": trial["successes"]},
              **trial["baselines"]}
    machine = prov["machine"]
    return {"exam": exam, "seed": trial["seed"], "config": EXAMS[exam], "overrides": [f"train.seed={trial['seed']}"],
            "method": trial["algorithm"], "family": trial["family"], "steps": trial["steps"],
            "task_ids": trial["task_ids"], "robots": trial["robots"], "models": models,
            "env_steps": trial["env_steps"], "iterations": trial["iterations"],
            "train_seconds": trial["train_seconds"], "wall_seconds": trial["wall_seconds"],
            "mlflow_run_id": trial["run_id"],
            "provenance": {"command": prov["command"], "commit": prov["commit"],
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "load_average_start": prov["load_average_start"],
                           "machine": {"cpu_count": machine["cpu_count"], "cpu_model": machine["cpu_model"],
                                       "cuda_device": provenance.cuda_device()}}}


def run_sweep(exam: str, seeds: list[int], extra: list[str], prov: dict) -> list[dict]:
    """The exam's seeds 0..N-1 as one `fleet sweep` (a subprocess: its own Ray, Tune trials, MLflow parent run)."""
    import subprocess
    import tempfile

    if sorted(seeds) != list(range(len(seeds))):
        raise SystemExit(f"--sweep runs seeds 0..N-1 (fleet sweep --seeds N); got {seeds}")
    out = Path(tempfile.mkdtemp()) / "sweep.json"
    name = f"exam-{exam}-{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    command = [sys.executable, "-m", "metafleet", "sweep", str(ROOT / EXAMS[exam]), "--seeds", str(len(seeds)),
               "--name", name, "--out", str(out), *[x for item in extra for x in ("--set", item)]]
    subprocess.run(command, cwd=ROOT, check=True)
    return [from_sweep(exam, trial, prov) for trial in json.loads(out.read_text())["trials"]]


def save(path: Path, runs: list[dict], prov: dict) -> None:
    """All runs, sorted, with this invocation's provenance on top (each run keeps its own)."""
    runs = sorted(runs, key=lambda r: (r["exam"], r["seed"]))
    provenance.write(path, {"format": "robot-exams", "runs": runs}, prov)


def plot(runs: list[dict], png: Path) -> None:
    """Held-out success within the first episode per exam and model (mean ± stderr over seeds, else tasks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.robot_exams_report import ORDER, spread

    exams = sorted({r["exam"] for r in runs})
    fig, axes = plt.subplots(1, len(exams), figsize=(4.2 * len(exams), 3.2), squeeze=False)
    for ax, exam in zip(axes[0], exams):
        mine = [r for r in runs if r["exam"] == exam]
        models = [m for m in ORDER if m in mine[0]["models"]]
        cells = [spread(mine, m, "successes", "0") for m in models]
        ax.bar(models, [c[0] for c in cells], yerr=[c[1] for c in cells], color=["C0", "C2", "C1", "C7"][:len(models)])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{exam}: held-out robots, first episode ({len(mine)} seed{'s' * (len(mine) > 1)})", fontsize=9)
        ax.set_ylabel("success")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exams", nargs="+", choices=sorted(EXAMS), default=["arm", "cheetah"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (e.g. train.iterations=40)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--merge", action="store_true", help="keep the file's other runs (same exam+seed replaced)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="only draw the figure from --out's runs")
    parser.add_argument("--sweep", action="store_true", help="run each exam's seeds as one `fleet sweep`")
    args = parser.parse_args(argv)
    if args.plot:
        plot(load(args.out), args.plot)
        return 0
    prov = provenance.start("robot_exams.py", argv)
    runs = load(args.out) if args.merge else []
    for exam in args.exams:
        if args.sweep:
            for record in run_sweep(exam, args.seeds, args.overrides, prov):
                runs = [r for r in runs if (r["exam"], r["seed"]) != (exam, record["seed"])] + [record]
            save(args.out, runs, prov)
            print(f"robot_exams: {exam} seeds {args.seeds} done (fleet sweep) -> {args.out}", flush=True)
            continue
        for seed in args.seeds:
            record = run_one(exam, seed, args.overrides, prov)
            runs = [r for r in runs if (r["exam"], r["seed"]) != (exam, seed)] + [record]
            save(args.out, runs, prov)
            print(f"robot_exams: {exam} seed {seed} done in {record['wall_seconds']:.0f}s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
