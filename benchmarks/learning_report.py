"""The tables of issue 12 item 6 from `results/learning-v2.json` (written by `benchmarks/learning.py`), and its
figure. Standard library only (matplotlib is imported by `plot_learning_curves` alone), like benchmarks/report.py,
which renders the `<!-- report:learning-v2 -->` and `<!-- report:learning-curves -->` blocks with these functions.

A run (one family x learner x seed) holds per-task returns and successes per adaptation round for the method
(`returns`, `successes`) and for each baseline of its final evaluation (`baselines[name]`: every run has
"from-scratch", a belief run also "oracle"), and its learning curve (`curve`: the held-out summary after each
periodic evaluation, with the training env steps at that point).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

ROUNDS = (0, 1, 2)  # the adaptation rounds tabulated (the targets: <= 2 context episodes / gradient steps)
SCRATCH, ORACLE = "from-scratch", "oracle"  # learner/evaluation.py FROM_SCRATCH and ORACLE (not imported: stdlib)
FAMILY_ORDER = ("reach", "push", "velocity", "direction", "dynamics")
LEARNER_ORDER = ("belief", "pearl", "maml", "maml (3 steps)", "fomaml", "metasgd", "reptile", "rl2", "mtppo")
CURVE_POINTS = 6  # evaluations shown per curve in the table (evenly spaced, first and last included)


# ------------------------------------------------------------------------------------ helpers
def stderr(values: list[float]) -> float:
    """Sample std / sqrt(n), as learner.evaluation.stderr; 0 for one value."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def mean_stderr(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {stderr(values):.2f}"


def table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)]


def human_steps(n: float) -> str:
    """12,345 -> 12k; 1,234,567 -> 1.23M."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else f"{n:.0f}"


def clock(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def ordered(keys, order: tuple[str, ...]) -> list[str]:
    """`keys` (deduplicated, first appearance kept) with those named in `order` first, in that order."""
    keys = list(dict.fromkeys(keys))
    return [k for k in order if k in keys] + [k for k in keys if k not in order]


def families(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """family -> learner -> runs, in the table's order."""
    out: dict[str, dict[str, list[dict]]] = {}
    for family in ordered((r["family"] for r in runs), FAMILY_ORDER):
        mine = [r for r in runs if r["family"] == family]
        out[family] = {a: [r for r in mine if r["algorithm"] == a]
                       for a in ordered((r["algorithm"] for r in mine), LEARNER_ORDER)}
    return out


def figures(run: dict, model: str | None) -> dict | None:
    """The per-task {"returns", "successes"} of `run`'s method (model None) or of its baseline `model`."""
    return run if model is None else run.get("baselines", {}).get(model)


def pooled(runs: list[dict], model: str | None, kind: str, k: int) -> list[float]:
    """Every per-task value of round k over `runs` (tasks x seeds), for the method or a baseline."""
    return [v for r in runs if (f := figures(r, model)) for v in f[kind].get(str(k), [])]


def last_round(runs: list[dict], model: str | None) -> int | None:
    """The last tabulated round every one of `runs` measured for `model`."""
    common = [k for k in ROUNDS if all((f := figures(r, model)) and str(k) in f["returns"] for r in runs)]
    return common[-1] if common else None


def oracle_fraction(value: float, scratch: float, oracle: float) -> float | None:
    """(v - s) / (o - s), as learner.evaluation.oracle_fraction: None when the oracle is no better than scratch."""
    span = oracle - scratch
    return None if not span > 1e-9 else (value - scratch) / span


def fraction_cell(runs: list[dict], k: int | None, yardsticks: dict[str, list[dict]]) -> str:
    """The method's return at round k as a fraction of the family's oracle, each seed's run against the family's
    pooled from-scratch and oracle returns at round k; mean ± stderr over seeds."""
    if k is None:
        return "n/a"
    scratch, oracle = pooled(yardsticks[SCRATCH], SCRATCH, "returns", k), pooled(yardsticks[ORACLE], ORACLE,
                                                                                  "returns", k)
    if not scratch or not oracle:
        return "n/a"
    s, o = statistics.fmean(scratch), statistics.fmean(oracle)
    fractions = [oracle_fraction(statistics.fmean(r["returns"][str(k)]), s, o) for r in runs]
    if any(f is None for f in fractions):
        return "n/a (oracle <= scratch)"
    return mean_stderr(fractions) if len(fractions) > 1 else f"{fractions[0]:.2f}"


def seeds_of(runs: list[dict]) -> str:
    return ", ".join(str(s) for s in sorted({r["seed"] for r in runs}))


# ----------------------------------------------------------------------------------- the table
def render_learning_v2(data: dict) -> list[str]:
    """Per family: each learner, then the from-scratch and oracle yardsticks; held-out return after 0/1/2 rounds,
    success after the last round, fraction of the oracle, seeds, env steps and wall-clock per run."""
    rows = []
    for family, learners in families(data["runs"]).items():
        every = [r for runs in learners.values() for r in runs]
        yardsticks = {name: [r for r in every if name in r.get("baselines", {})] for name in (SCRATCH, ORACLE)}
        for learner, runs in learners.items():
            k = last_round(runs, None)
            rows.append([family, learner, *returns_cells(runs, None), success_cell(runs, None, k),
                         fraction_cell(runs, k, yardsticks), seeds_of(runs),
                         f"{statistics.fmean(r['env_steps'] for r in runs):,.0f}",
                         clock(statistics.fmean(r["wall_seconds"] for r in runs))])
        for name, label, steps in ((SCRATCH, "0 (yardstick)", "0 (untrained)"), (ORACLE, "1 (yardstick)", None)):
            runs = yardsticks[name]
            if not runs:
                continue
            owners = "in " + ", ".join(ordered((r["algorithm"] for r in runs), LEARNER_ORDER)) + " runs"
            rows.append([family, f"*{name}*", *returns_cells(runs, name), success_cell(runs, name,
                         last_round(runs, name)), label, seeds_of(runs), steps or owners, "–"])
    header = ["family", "learner", *(f"after {k}" for k in ROUNDS), "success (last round)", "of oracle", "seeds",
              "env steps / run", "wall-clock / run"]
    lines = table(header, rows, "ll" + "r" * (len(ROUNDS) + 2) + "lrr")
    return [*lines, "", "Held-out tasks. After k: return after k adaptation rounds (gradient steps; context "
            "episodes for PEARL, RL² and belief), mean ± stderr over tasks x seeds. Of oracle: (R - R_scratch) / "
            "(R_oracle - R_scratch) at the last round, each seed's run against the family's pooled from-scratch "
            "and oracle rows, mean ± stderr over seeds; n/a where the family has no oracle run. *from-scratch* "
            "pools every run's untrained baseline (a fresh learner of the run's kind, same protocol); *oracle* is "
            "the belief learner's policy given the true task parameters, trained on its run's env steps. Wall-clock: "
            "the whole run (training, the periodic and final evaluations).",
            *invocations(data["runs"])]


def returns_cells(runs: list[dict], model: str | None) -> list[str]:
    out = []
    for k in ROUNDS:
        values = pooled(runs, model, "returns", k)
        out.append(mean_stderr(values) if values else "–")
    return out


def success_cell(runs: list[dict], model: str | None, k: int | None) -> str:
    values = pooled(runs, model, "successes", k) if k is not None else []
    if not values:
        return "–"
    return mean_stderr(values) + ("" if k == ROUNDS[-1] else f" (after {k})")


def invocations(runs: list[dict]) -> list[str]:
    """A line naming each command the runs came from, when they came from more than one (`--merge`)."""
    seen = list(dict.fromkeys((p["command"], p["commit"], p["date"][:10]) for r in runs
                              if (p := r.get("provenance"))))
    if len(seen) < 2:
        return []
    return ["", "Runs merged from: " + "; ".join(f"`{c}` (commit `{h}`, {d})" for c, h, d in seen) + "."]


# ----------------------------------------------------------------------------------- the curves
def curve(runs: list[dict]) -> tuple[int | None, list[tuple[int, float, float, float, float]]]:
    """(round k, points): held-out return and success after k rounds at each evaluation every run made, as
    (iteration, env steps, return mean, stderr, success mean); over seeds when several, else over tasks."""
    ks = [k for k in ROUNDS if all(str(k) in p["summary"] for r in runs for p in r.get("curve", []))]
    if not ks or not all(r.get("curve") for r in runs):
        return None, []
    k = str(ks[-1])
    by_run = [{p["iteration"]: p for p in r["curve"]} for r in runs]
    points = []
    for it in sorted(set.intersection(*(set(b) for b in by_run))):
        here = [b[it] for b in by_run]
        means = [p["summary"][k]["return_mean"] for p in here]
        se = stderr(means) if len(here) > 1 else here[0]["summary"][k]["return_stderr"]
        points.append((it, statistics.fmean(p["env_steps"] for p in here), statistics.fmean(means), se,
                       statistics.fmean(p["summary"][k]["success_mean"] for p in here)))
    return ks[-1], points


def spaced(points: list, n: int = CURVE_POINTS) -> list:
    """At most n of `points`, evenly spaced, the first and the last included."""
    if len(points) <= n:
        return points
    return [points[i] for i in sorted({round(j * (len(points) - 1) / (n - 1)) for j in range(n)})]


def render_learning_curves(data: dict) -> list[str]:
    """Per (family, learner): held-out return after adaptation at evenly spaced evaluations during training."""
    rows = []
    for family, learners in families(data["runs"]).items():
        for learner, runs in learners.items():
            k, points = curve(runs)
            cells = [f"{m:.2f} ± {se:.2f} @ {human_steps(steps)}" for _, steps, m, se, _ in spaced(points)]
            if not points:
                cells = ["no evaluation common to every seed's run (train.eval_every)"]
            rows.append([family, learner, seeds_of(runs), "–" if k is None else str(k),
                         *cells, *["–"] * (CURVE_POINTS - len(cells))])
    header = ["family", "learner", "seeds", "round", *(f"eval {i + 1}" for i in range(CURVE_POINTS))]
    lines = table(header, rows, "llrr" + "r" * CURVE_POINTS)
    return [*lines, "", f"Held-out return after `round` adaptation rounds @ training env steps, at up to "
            f"{CURVE_POINTS} evenly spaced held-out evaluations (every `train.eval_every` iterations; the first is "
            "before training, the last is the final evaluation); mean ± stderr over seeds (one seed: over tasks)."]


def plot_learning_curves(data: dict, path: Path) -> Path:
    """One panel per family: held-out return after adaptation vs env steps, a line per learner, with the family's
    from-scratch and oracle returns (final evaluation) as dashed lines. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = families(data["runs"])
    fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 3.5), squeeze=False)
    for ax, (family, learners) in zip(axes[0], groups.items()):
        every = [r for runs in learners.values() for r in runs]
        for learner, runs in learners.items():
            k, points = curve(runs)
            if points:
                x, y, e = [p[1] for p in points], [p[2] for p in points], [p[3] for p in points]
                ax.plot(x, y, marker="o", markersize=3, label=f"{learner} (after {k})")
                ax.fill_between(x, [a - b for a, b in zip(y, e)], [a + b for a, b in zip(y, e)], alpha=0.2)
        for name, style in ((SCRATCH, ":"), (ORACLE, "--")):
            runs = [r for r in every if name in r.get("baselines", {})]
            k = last_round(runs, name) if runs else None
            if k is not None:
                ax.axhline(statistics.fmean(pooled(runs, name, "returns", k)), color="gray", linestyle=style,
                           label=name)
        ax.set_title(f"{family} (held-out)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("return after adaptation")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
