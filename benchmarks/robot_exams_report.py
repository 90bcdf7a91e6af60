"""Render results/robot-exams.json (benchmarks/robot_exams.py) for docs/results.md: per exam, every model's held-out
return and success per round (mean ± stderr over seeds, or over held-out tasks with one seed), "of oracle", the
validity rule and the targets, and the worst held-out robots' own rows. Standard library only (CI runs it)."""

from __future__ import annotations

import math
import statistics

ORDER = ("rma", "belief", "oracle", "robot-agnostic", "from-scratch")
YARDSTICKS = ("oracle", "robot-agnostic", "from-scratch")


def mean_stderr(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def per_seed(runs: list[dict], model: str, kind: str, k: str) -> list[float]:
    """One value per seed: the mean over that run's held-out tasks."""
    return [statistics.fmean(r["models"][model][kind][k]) for r in runs if model in r["models"]]


def spread(runs: list[dict], model: str, kind: str, k: str) -> tuple[float, float]:
    """mean ± stderr over seeds (over tasks when there is one seed)."""
    if len(runs) > 1:
        return mean_stderr(per_seed(runs, model, kind, k))
    return mean_stderr(runs[0]["models"][model][kind][k])


def fraction(value: float, scratch: float, oracle: float) -> str:
    span = oracle - scratch
    return f"{(value - scratch) / span:.2f}" if span > 1e-9 else "n/a"


def exam_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    models = [m for m in ORDER if m in runs[0]["models"]] + [m for m in runs[0]["models"] if m not in ORDER]
    for model in models:
        for k in runs[0]["models"][model]["returns"]:
            ret, succ = spread(runs, model, "returns", k), spread(runs, model, "successes", k)
            scratch, oracle = spread(runs, "from-scratch", "returns", k)[0], spread(runs, "oracle", "returns", k)[0]
            frac = fraction(ret[0], scratch, oracle)
            rows.append([model, k, f"{ret[0]:.2f} ± {ret[1]:.2f}", f"{succ[0]:.2f} ± {succ[1]:.2f}", frac])
    return rows


def verdicts(runs: list[dict]) -> list[str]:
    """The validity rule (oracle vs robot-agnostic) and the targets (the adaptive learner within its first episode)."""
    k, method = "0", runs[0]["method"]
    ret = {m: spread(runs, m, "returns", k) for m in (method, *YARDSTICKS)}
    succ = {m: spread(runs, m, "successes", k) for m in (method, "oracle", "robot-agnostic")}
    span = ret["oracle"][0] - ret["from-scratch"][0]
    gap = (ret["oracle"][0] - ret["robot-agnostic"][0]) / span if span > 1e-9 else float("nan")
    valid = succ["oracle"][0] - succ["robot-agnostic"][0] >= 0.3 or gap >= 0.3
    of_oracle = (ret[method][0] - ret["from-scratch"][0]) / span if span > 1e-9 else float("nan")
    noise = math.hypot(ret[method][1], ret["robot-agnostic"][1])
    above = (ret[method][0] - ret["robot-agnostic"][0]) / noise if noise > 0 else float("inf")
    return [f"- validity (oracle vs robot-agnostic, round 0): success {succ['oracle'][0]:.2f} vs "
            f"{succ['robot-agnostic'][0]:.2f} (gap {succ['oracle'][0] - succ['robot-agnostic'][0]:+.2f}, rule >= 0.3), "
            f"return gap {gap:.2f} of the from-scratch -> oracle range (rule >= 0.30): "
            f"**{'valid' if valid else 'not valid'}**",
            f"- {label(method)} within the first episode: {of_oracle:.2f} of the oracle (target >= 0.8), "
            f"{above:.1f} stderr above the robot-agnostic policy (target >= 3)"]


def robot_rows(runs: list[dict], worst: int = 3) -> list[list[str]]:
    """The held-out robots with the adaptive learner's lowest return (round 0), pooled over seeds and tasks."""
    method = runs[0]["method"]
    pooled: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for i, robot in enumerate(run["robots"]):
            cell = pooled.setdefault(robot, {})
            for model in (method, "oracle", "robot-agnostic"):
                cell.setdefault(model + "/r", []).append(run["models"][model]["returns"]["0"][i])
                cell.setdefault(model + "/s", []).append(run["models"][model]["successes"]["0"][i])
    order = sorted(pooled, key=lambda rid: statistics.fmean(pooled[rid][method + "/r"]))[:worst]
    return [[rid, *[f"{statistics.fmean(pooled[rid][m + '/r']):.1f} / {statistics.fmean(pooled[rid][m + '/s']):.2f}"
                    for m in (method, "oracle", "robot-agnostic")]] for rid in order]


def label(method: str) -> str:
    return {"rma": "RMA", "belief": "The belief learner"}.get(method, method)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in rows]]


def render_robot_exams(data: dict) -> list[str]:
    lines: list[str] = []
    for exam in sorted({r["exam"] for r in data["runs"]}):
        runs = [r for r in data["runs"] if r["exam"] == exam]
        seeds = ", ".join(str(r["seed"]) for r in runs)
        steps = max(r["env_steps"] for r in runs)
        minutes = statistics.fmean(r["wall_seconds"] for r in runs) / 60
        lines += [f"**{exam}** (`{runs[0]['config']}`, family `{runs[0]['family']}`, held-out robots; seeds {seeds}; "
                  f"{steps:,} env steps per run; {minutes:.0f} min per run with its yardsticks):", ""]
        lines += table(["model", "round", "return", "success", "of oracle"], exam_rows(runs))
        method = runs[0]["method"]
        lines += ["", *verdicts(runs), "", f"Worst held-out robots ({method} return, round 0; return / success):", ""]
        lines += [*table(["robot", method, "oracle", "robot-agnostic"], robot_rows(runs)), ""]
    commands = sorted({r["provenance"]["command"] for r in data["runs"]})
    lines += ["Runs from: " + "; ".join(f"`{c}`" for c in commands)]
    return lines
