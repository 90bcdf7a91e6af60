"""Figures logged to MLflow."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from learner.evaluation import EvalResult


def _curve(ax, result: EvalResult, label: str, **style) -> None:
    """Mean +/- stderr over tasks vs adaptation steps."""
    summary = result.summary()
    steps = list(summary)
    ax.errorbar(steps, [summary[k]["return_mean"] for k in steps], yerr=[summary[k]["return_stderr"] for k in steps],
                marker="o", capsize=3, label=label, **style)


def adaptation_figure(final: EvalResult, before: EvalResult | None = None, title: str = "",
                      baselines: dict[str, EvalResult] | None = None):
    """Held-out return (mean +/- stderr over tasks) vs adaptation steps: the method before and after
    meta-training, and each baseline (dashed) under the same protocol."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, result in (("untrained", before), ("meta-trained", final)):
        if result is not None:
            _curve(ax, result, label)
    for name, result in (baselines or {}).items():
        _curve(ax, result, name, linestyle="--")
    ax.set_xticks(final.steps)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel("held-out return")
    ax.set_title(title or "return vs adaptation steps")
    ax.legend()
    fig.tight_layout()
    return fig


def per_task_figure(results: dict[str, EvalResult], title: str = ""):
    """Left: mean +/- stderr vs steps for each method. Right: every held-out task's return vs steps (one
    thin line per task and method, same colour per method), so a mean carried by a few tasks shows."""
    fig, (mean_ax, task_ax) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, result) in enumerate(results.items()):
        colour = colours[i % len(colours)]
        _curve(mean_ax, result, name, color=colour)
        for t in range(len(result.task_ids)):
            task_ax.plot(result.steps, [result.returns[k][t] for k in result.steps], color=colour, alpha=0.35,
                         linewidth=1, marker=".", label=name if t == 0 else None)
    for ax, heading in ((mean_ax, "mean ± stderr over tasks"), (task_ax, "per task")):
        ax.set_xticks(next(iter(results.values())).steps)
        ax.set_xlabel("adaptation steps")
        ax.set_title(heading)
        ax.legend()
    mean_ax.set_ylabel("held-out return")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
