"""The learning table: algorithm x task family x (return after 0, 1, 2, 3 adaptation steps) on
held-out tasks, several seeds, mean ± stderr over tasks x seeds; markdown, JSON and PNG.

Every algorithm of a family runs that family's config (`FAMILY_CONFIGS`) with only the learner
swapped (`ALGORITHM_OVERRIDES`), so all cells of a row-group consume the same env steps and are
evaluated with the same protocol, tasks and seeds. For RL^2, "step k" is the k-th episode of a
trial (k context episodes seen); for the gradient methods it is k policy-gradient steps.

    python benchmarks/learning.py --families reach direction --algorithms maml mtppo \
        --seeds 0 1 --iterations 40 --out results/learning
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
from learner.evaluation import stderr
from learner.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # works from any working directory
FAMILY_CONFIGS = {family: str(CONFIGS / f"{family}.yaml") for family in
                  ("reach", "push", "velocity", "direction", "dynamics")}
ALGORITHM_OVERRIDES = {
    "maml": ["learner.algorithm=maml", "learner.first_order=false"],
    "fomaml": ["learner.algorithm=maml", "learner.first_order=true"],
    "reptile": ["learner.algorithm=reptile"],
    "metasgd": ["learner.algorithm=metasgd"],
    "rl2": ["learner.algorithm=rl2", "learner.trial_episodes=2"],
    "mtppo": ["learner.algorithm=mtppo"],
}


def run_one(family: str, algorithm: str, seed: int, iterations: int, backend: str, extra: list[str]) -> dict:
    overrides = [*ALGORITHM_OVERRIDES[algorithm], f"train.seed={seed}", f"train.iterations={iterations}",
                 "train.eval_every=0", f"workers.backend={backend}", *extra]
    cfg = load_config(FAMILY_CONFIGS[family], overrides)
    started = time.perf_counter()
    result = train(cfg)
    result.tracker.close()
    return {"family": family, "algorithm": algorithm, "seed": seed, "env_steps": result.env_steps,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "returns": {str(k): v for k, v in result.final_eval.returns.items()},
            "successes": {str(k): v for k, v in result.final_eval.successes.items()}}


def summarize(runs: list[dict]) -> dict[str, tuple[float, float]]:
    """Step -> (mean, stderr) over every held-out task of every seed."""
    steps = sorted({int(k) for r in runs for k in r["returns"]})
    out = {}
    for k in steps:
        values = [v for r in runs for v in r["returns"].get(str(k), [])]
        out[str(k)] = (float(np.mean(values)), stderr(values))
    return out


def table(results: list[dict]) -> str:
    """Markdown, one row per (family, algorithm)."""
    groups = group(results)
    steps = sorted({int(k) for runs in groups.values() for r in runs for k in r["returns"]})
    lines = ["| family | algorithm | seeds | env steps / seed | "
             + " | ".join(f"after {k}" for k in steps) + " |", "|" + "---|" * (len(steps) + 4)]
    for (family, algorithm), runs in groups.items():
        cells = summarize(runs)
        lines.append(f"| {family} | {algorithm} | {len(runs)} | {runs[0]['env_steps']:,} | "
                     + " | ".join(f"{cells[str(k)][0]:.2f} ± {cells[str(k)][1]:.2f}" if str(k) in cells else "–"
                                  for k in steps) + " |")
    return "\n".join(lines)


def group(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["family"], r["algorithm"]), []).append(r)
    return groups


def figure(results: list[dict], path: Path) -> None:
    """One panel per family: held-out return vs adaptation steps, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group(results)
    families = list(dict.fromkeys(f for f, _ in groups))
    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.4), squeeze=False)
    for ax, family in zip(axes[0], families):
        for (fam, algorithm), runs in groups.items():
            if fam != family:
                continue
            cells = summarize(runs)
            ks = sorted(int(k) for k in cells)
            ax.errorbar(ks, [cells[str(k)][0] for k in ks], yerr=[cells[str(k)][1] for k in ks], marker="o",
                        capsize=3, label=algorithm)
        ax.set_title(f"{family} (held-out)")
        ax.set_xlabel("adaptation steps (RL²: context episodes)")
        ax.set_ylabel("return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["reach"], choices=list(FAMILY_CONFIGS))
    parser.add_argument("--algorithms", nargs="+", default=["maml", "mtppo"], choices=list(ALGORITHM_OVERRIDES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--backend", default="ray", choices=["ray", "local"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (e.g. train.eval_tasks=10)")
    parser.add_argument("--out", default=None, help="directory for learning.json / learning.md / learning.png")
    parser.add_argument("--json", default=str(provenance.default_path("learning")),
                        help="the raw JSON with provenance (default: results/learning.json)")
    prov = provenance.start("learning.py", argv)
    args = parser.parse_args(argv)
    for family in args.families:  # fail before hours of training, not after
        for algorithm in args.algorithms:
            load_config(FAMILY_CONFIGS[family], [*ALGORITHM_OVERRIDES[algorithm], *args.overrides])
    if "MLFLOW_TRACKING_URI" not in os.environ:  # keep benchmark runs out of the user's store
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    out = Path(args.out) if args.out else None
    results: list[dict] = []
    for family in args.families:
        for algorithm in args.algorithms:
            for seed in args.seeds:
                results.append(run_one(family, algorithm, seed, args.iterations, args.backend, args.overrides))
                print(f"done {family}/{algorithm}/seed {seed}: {results[-1]['wall_seconds']} s", flush=True)
                if out:  # partial results survive an interrupted sweep
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "learning.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    print(f"held-out tasks, seeds {args.seeds}, {args.iterations} iterations; mean ± stderr over tasks x seeds\n"
          + text)
    provenance.write(args.json, {"seeds": args.seeds, "iterations": args.iterations, "overrides": args.overrides,
                                 "runs": results}, prov)
    if out:
        (out / "learning.md").write_text(text + "\n")
        figure(results, out / "learning.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
