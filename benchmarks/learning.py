"""The learning table: learner x task family x held-out return and success after 0, 1, 2, ... adaptation
rounds, the from-scratch and oracle yardsticks of each run's final evaluation, and a learning curve per run;
raw JSON with provenance (results/learning-v2.json), from which `benchmarks/report.py` renders the
`learning-v2` and `learning-curves` tables of docs/results.md.

Every learner of a family runs that family's config (`FAMILY_CONFIGS`) with only the learner swapped
(`ALGORITHM_OVERRIDES`), so the cells of a family share the fleet, the held-out tasks, the seeds and the
evaluation protocol; PEARL runs the family's own PEARL config (`OWN_CONFIGS`: its sizes are off-policy ones),
on the same fleet. The curve is the held-out evaluation every `train.eval_every` iterations (and the final one).
For RL², PEARL and belief a round is a context episode; for the gradient methods, a policy-gradient step.

    python benchmarks/learning.py --families reach push --algorithms belief pearl maml rl2 mtppo --seeds 0 1 2
    python benchmarks/learning.py --families velocity --algorithms pearl --seeds 0 --merge   # add to the same file
"""

from __future__ import annotations

import argparse
import datetime
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

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"  # works from any working directory
FAMILIES = ("reach", "push", "velocity", "direction", "dynamics")
# configs/reach.yaml is the main job, whose learner may change; reach-mtppo.yaml has its fleet and train sections.
FAMILY_CONFIGS = {family: str(CONFIGS / f"{family}.yaml") for family in FAMILIES} | {
    "reach": str(CONFIGS / "reach-mtppo.yaml")}
OWN_CONFIGS = {"pearl": "{family}-pearl.yaml"}  # learners run from their own per-family config, not overridden
ALGORITHM_OVERRIDES = {
    "belief": ["learner.algorithm=belief"],
    "pearl": [],
    "maml": ["learner.algorithm=maml", "learner.first_order=false"],
    "fomaml": ["learner.algorithm=maml", "learner.first_order=true"],
    "reptile": ["learner.algorithm=reptile"],
    "metasgd": ["learner.algorithm=metasgd"],
    "rl2": ["learner.algorithm=rl2", "learner.trial_episodes=2"],
    "mtppo": ["learner.algorithm=mtppo"],
}
RUN_KEY = ("family", "algorithm", "seed")  # a merged run replaces the stored run with the same key


def job(family: str, algorithm: str) -> tuple[str, list[str]]:
    """The config file and learner overrides of one (family, learner) cell."""
    if algorithm in OWN_CONFIGS:
        path = CONFIGS / OWN_CONFIGS[algorithm].format(family=family)
        if not path.is_file():
            raise FileNotFoundError(f"{algorithm} on {family} runs its own config {path}, which does not exist; "
                                    f"add it (as configs/reach-{algorithm}.yaml) or leave {family} or {algorithm} out")
        return str(path), list(ALGORITHM_OVERRIDES[algorithm])
    return FAMILY_CONFIGS[family], list(ALGORITHM_OVERRIDES[algorithm])


def overrides_for(algorithm: str, seed: int, iterations: int | None, backend: str | None,
                  extra: list[str]) -> list[str]:
    """Learner overrides, then the seed, the budget (default: the config's), the pool, then the user's --set."""
    return [*ALGORITHM_OVERRIDES[algorithm], f"train.seed={seed}",
            *([f"train.iterations={iterations}"] if iterations is not None else []),
            *([f"workers.backend={backend}"] if backend else []), *extra]


def figures(result) -> dict:
    """Per-task returns and successes per round of an EvalResult, JSON keys."""
    return {"returns": {str(k): v for k, v in result.returns.items()},
            "successes": {str(k): v for k, v in result.successes.items()}, "env_steps": result.env_steps}


def run_one(family: str, algorithm: str, seed: int, iterations: int | None, backend: str | None,
            extra: list[str], prov: dict | None = None) -> dict:
    """Train one cell and return its record: the method's per-task figures per round, each baseline's, the
    learning curve, env steps, wall-clock and where it came from."""
    path, _ = job(family, algorithm)
    overrides = overrides_for(algorithm, seed, iterations, backend, extra)
    cfg = load_config(path, overrides)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    result = train(cfg)
    result.tracker.close()
    final = result.final_eval
    record = {"family": family, "algorithm": algorithm, "seed": seed, "config": Path(path).relative_to(ROOT).as_posix(),
              "overrides": overrides, "iterations": result.iterations,
              "wall_seconds": round(time.perf_counter() - started, 1), "train_seconds": round(result.wall_seconds, 1),
              "steps": list(final.steps), "task_ids": list(final.task_ids), **figures(final),
              "env_steps": result.env_steps,  # training env steps (after figures(): its env_steps are the eval's)
              "eval_env_steps": final.env_steps,
              "baselines": {name: figures(r) for name, r in result.baselines.items()}, "curve": list(result.curve)}
    if prov is not None:
        machine = prov["machine"]
        record["provenance"] = {"command": prov["command"], "commit": prov["commit"], "date": date,
                                "machine": {"cpu_count": machine["cpu_count"], "cpu_model": machine["cpu_model"],
                                            "cuda_device": provenance.cuda_device()}}
    return record


def load_runs(path: Path) -> list[dict]:
    """The runs stored in a learning JSON (for --merge); none when the file does not exist yet."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        runs = data["runs"]
        if not isinstance(runs, list) or not all(isinstance(r, dict) and all(k in r for k in RUN_KEY) for r in runs):
            raise TypeError("`runs` must be a list of objects with family, algorithm and seed")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--merge: {path} is not a benchmarks/learning.py JSON ({exc}); expected "
                         '{"runs": [{"family": ..., "algorithm": ..., "seed": ..., ...}], "provenance": ...}') from exc
    return runs


def merge_runs(old: list[dict], new: list[dict]) -> list[dict]:
    """`old` with `new` added; a new run replaces an old one of the same family, learner and seed (in place)."""
    fresh = {tuple(r[k] for k in RUN_KEY): r for r in new}
    out = [fresh.pop(key, r) if (key := tuple(r[k] for k in RUN_KEY)) in fresh else r for r in old]
    return out + list(fresh.values())


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=None, help="meta-iterations per run (default: the config's)")
    parser.add_argument("--backend", default=None, choices=["ray", "local"], help="worker pool (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (e.g. train.eval_tasks=10)")
    parser.add_argument("--out", "--json", dest="out", default=str(provenance.default_path("learning-v2")),
                        help="the raw JSON with provenance, rewritten after every run (default: "
                             "results/learning-v2.json; --json is the old name of this flag)")
    parser.add_argument("--merge", action="store_true", help="add the runs to --out's runs (a run of the same "
                        "family, learner and seed replaces the stored one) instead of starting a new file")
    parser.add_argument("--figures", type=Path, default=None, metavar="DIR",
                        help="also write DIR/learning.md and DIR/learning.png (return vs adaptation rounds)")
    prov = provenance.start("learning.py", argv)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".json":
        parser.error(f"--out {out}: expected the JSON file to write (e.g. results/learning-v2.json); the markdown "
                     "table and the PNG go to --figures DIR")
    for family in args.families:  # fail before hours of training, not after
        for algorithm in args.algorithms:
            path, _ = job(family, algorithm)
            load_config(path, overrides_for(algorithm, args.seeds[0], args.iterations, args.backend, args.overrides))
    stored = load_runs(out) if args.merge else []
    if "MLFLOW_TRACKING_URI" not in os.environ:  # keep benchmark runs out of the user's store
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    results: list[dict] = []
    for family in args.families:
        for algorithm in args.algorithms:
            for seed in args.seeds:
                results.append(run_one(family, algorithm, seed, args.iterations, args.backend, args.overrides, prov))
                print(f"done {family}/{algorithm}/seed {seed}: {results[-1]['wall_seconds']} s", flush=True)
                # Rewritten after every run: an interrupted sweep keeps what it finished.
                provenance.write(out, {"format": "learning-v2", "runs": merge_runs(stored, results)}, prov)
    text = table(results)
    print(f"held-out tasks, seeds {args.seeds}; mean ± stderr over tasks x seeds\n" + text)
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        (args.figures / "learning.md").write_text(text + "\n")
        figure(results, args.figures / "learning.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
