"""Negative transfer, measured: per training task, multi-task return minus single-task return.

Trains the single-task baseline (`configs/single-task.yaml`: one network per training goal) and each
multi-task variant (`configs/mt-*.yaml`, plus the task-agnostic MT-PPO) on the same 10 reach goals
with the same budget and seed, evaluates every training task with the same episodes and seeds
(`learner.multitask_eval.evaluate_tasks`, as every run logs in `eval/tasks.json`), and reports the
transfer per task: a negative number is a task that sharing one network made worse.

    python benchmarks/transfer.py --iterations 40 --out results/transfer
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance
from learner.config import load_config
from learner.multitask_eval import TaskEvalResult, transfer, transfer_metrics
from learner.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = {
    "agnostic": ["learner.conditioning=none"],  # mt-concat.yaml's budget, no task input
    "concat": [], "additive": [], "multihead": [], "film": [], "pcgrad": [],
}


def config_of(variant: str) -> Path:
    return CONFIGS / ("single-task.yaml" if variant == "single" else
                      "mt-concat.yaml" if variant == "agnostic" else f"mt-{variant}.yaml")


def run_one(variant: str, iterations: int, seed: int, backend: str, extra: list[str]) -> dict:
    overrides = [*VARIANTS.get(variant, []), f"train.iterations={iterations}", f"train.seed={seed}",
                 "train.eval_every=0", f"workers.backend={backend}", *extra]
    cfg = load_config(config_of(variant), overrides)
    started = time.perf_counter()
    result = train(cfg)
    result.tracker.close()  # train() leaves the MLflow run open for the caller
    return {"variant": variant, "env_steps": result.env_steps, "wall_seconds": round(time.perf_counter() - started, 1),
            "tasks": result.train_tasks.to_dict()}


def table(single: TaskEvalResult, variants: dict[str, TaskEvalResult]) -> str:
    """Markdown: mean return, mean transfer vs single-task, tasks made worse, worst task."""
    lines = ["| policy | mean return (train goals) | mean transfer | tasks worse than single-task | worst task |",
             "|---|---|---|---|---|"]
    lines.append(f"| single-task (one network per goal) | {np.mean(single.returns):.2f} | – | – | – |")
    for name, result in variants.items():
        per_task = transfer(result, single)
        summary = transfer_metrics(per_task)
        worst = min(per_task, key=per_task.get)
        worse = sum(v < 0 for v in per_task.values())
        lines.append(f"| multi-task {name} | {np.mean(result.returns):.2f} | {summary['transfer/mean']:+.2f} | "
                     f"{worse}/{len(per_task)} | {worst} ({per_task[worst]:+.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="local", choices=["ray", "local"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="directory for transfer.json / transfer.md")
    parser.add_argument("--json", default=str(provenance.default_path("transfer")),
                        help="the raw JSON with provenance (default: results/transfer.json)")
    prov = provenance.start("transfer.py", argv)
    args = parser.parse_args(argv)
    for variant in ["single", *args.variants]:  # every config must validate before hours of training
        load_config(config_of(variant), [*VARIANTS.get(variant, []), *args.overrides])
    if "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    runs = [run_one(v, args.iterations, args.seed, args.backend, args.overrides) for v in ["single", *args.variants]]
    results = {r["variant"]: TaskEvalResult.from_dict(r["tasks"]) for r in runs}
    text = table(results.pop("single"), results)
    print(f"10 reach training goals, seed {args.seed}, {args.iterations} iterations, "
          f"{runs[0]['env_steps']:,} env steps per policy\n{text}")
    provenance.write(args.json, {"seed": args.seed, "iterations": args.iterations, "runs": runs}, prov)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "transfer.json").write_text(json.dumps(runs, indent=2))
        (out / "transfer.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
