"""Figures logged to MLflow."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from learner.evaluation import EvalResult


def adaptation_figure(final: EvalResult, before: EvalResult | None = None, title: str = ""):
    """Held-out return (mean +/- stderr over tasks) vs adaptation steps."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, result in (("untrained", before), ("meta-trained", final)):
        if result is None:
            continue
        summary = result.summary()
        steps = list(summary)
        ax.errorbar(steps, [summary[k]["return_mean"] for k in steps],
                    yerr=[summary[k]["return_stderr"] for k in steps], marker="o", capsize=3, label=label)
    ax.set_xticks(final.steps)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel("held-out return")
    ax.set_title(title or "return vs adaptation steps")
    ax.legend()
    fig.tight_layout()
    return fig
