"""MAML vs multi-task PPO on held-out reach goals at equal env steps, several seeds.

Both algorithms run the same config budget (meta-batch x (support + query) episodes per
iteration), so they consume identical env steps; both are evaluated with the same protocol
(0..k policy-gradient adaptation steps on held-out tasks).

    python benchmarks/learning.py --seeds 0 1 2 --iterations 40 --out results/learning
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

from learner.config import load_config
from learner.evaluation import stderr
from learner.trainer import train

ALGORITHMS = {"maml": "configs/reach-maml.yaml", "mtppo": "configs/reach-mtppo.yaml"}


def run_one(config: str, seed: int, iterations: int, backend: str) -> dict:
    cfg = load_config(config, [f"train.seed={seed}", f"train.iterations={iterations}", "train.eval_every=0",
                               f"workers.backend={backend}"])
    started = time.perf_counter()
    result = train(cfg)
    result.tracker.close()
    return {"seed": seed, "env_steps": result.env_steps, "wall_seconds": time.perf_counter() - started,
            "returns": {str(k): v for k, v in result.final_eval.returns.items()},
            "successes": {str(k): v for k, v in result.final_eval.successes.items()}}


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: per algorithm and adaptation step, mean ± stderr over all held-out tasks x seeds."""
    steps = sorted({int(k) for runs in results.values() for r in runs for k in r["returns"]})
    head = "| algorithm | env steps / seed | " + " | ".join(f"return after {k} steps" for k in steps)
    lines = [head + " | success after 1 step |", "|" + "---|" * (len(steps) + 3)]
    for algo, runs in results.items():
        cells = []
        for k in steps:
            values = [v for r in runs for v in r["returns"][str(k)]]
            cells.append(f"{np.mean(values):.2f} ± {stderr(values):.2f}")
        success = [v for r in runs for v in r["successes"].get("1", [])]
        lines.append(f"| {algo} | {runs[0]['env_steps']} | " + " | ".join(cells)
                     + f" | {np.mean(success):.2f} ± {stderr(success):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--backend", default="ray", choices=["ray", "local"])
    parser.add_argument("--out", default=None, help="directory for learning.json / learning.md")
    args = parser.parse_args(argv)
    if "MLFLOW_TRACKING_URI" not in os.environ:  # keep benchmark runs out of the user's store
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    results = {algo: [run_one(ALGORITHMS[algo], s, args.iterations, args.backend) for s in args.seeds]
               for algo in args.algorithms}
    text = table(results)
    print(f"held-out reach goals, {len(args.seeds)} seeds x {args.iterations} iterations, mean ± stderr over "
          "tasks x seeds\n" + text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "learning.json").write_text(json.dumps(results, indent=2))
        (out / "learning.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
