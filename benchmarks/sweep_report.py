"""Render a `benchmarks/sweep.py` results JSON (results/sweep-NAME.json) for the docs: one row per swept point and
model (the learner, then its yardsticks), held-out success and return per round, mean ± stderr over seeds, then the
sweep's time. Standard library only (CI runs it)."""

from __future__ import annotations

import json
import statistics


def cell(pair: list[float]) -> str:
    return f"{pair[0]:.2f} ± {pair[1]:.2f}"


def render_sweep(data: dict) -> list[str]:
    summary = data["summary"]
    if not summary:
        return ["(no finished trial)"]
    rounds = sorted({k for s in summary for k in s["rounds"]}, key=int)
    keys = list(summary[0]["point"])
    head = [*keys, "model", "seeds", *(f"success after {k}" for k in rounds), *(f"return after {k}" for k in rounds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        models = [(s.get("algorithm") or "learner", s["rounds"]), *sorted(s["baselines"].items())]
        for model, cells in models:
            point = [str(s["point"].get(k, "")) for k in keys]
            lines.append("| " + " | ".join([*point, model, str(len(s["seeds"])),
                                            *(cell(cells[k]["success"]) if k in cells else "–" for k in rounds),
                                            *(cell(cells[k]["return"]) if k in cells else "–" for k in rounds)]) + " |")
    trials = data["trials"]
    minutes = statistics.fmean(t["wall_seconds"] for t in trials) / 60
    steps = statistics.fmean(t["env_steps"] for t in trials)
    lines += ["", f"{len(trials)} trials of `{data['sweep']['config']}`"
              + (f" with `{' '.join(data['sweep']['overrides'])}`" if data["sweep"]["overrides"] else "")
              + f", {steps:,.0f} env steps each; {minutes:.1f} min per trial with its yardsticks, "
              f"{data['wall_seconds'] / 60:.1f} min for the sweep on this machine; MLflow parent run "
              f"`{data['parent_run_id']}`; per-trial records in the JSON "
              f"({json.dumps(sorted(t['key'] for t in trials))})."]
    return lines
