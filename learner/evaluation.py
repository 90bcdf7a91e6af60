"""Evaluation: on held-out tasks, return and success after 0..k rounds of adaptation, under one
protocol object (`EvalProtocol`) for the method, its baselines and the per-task evaluation.

The learner says what each round is (`Learner.adaptation`): gradient learners adapt round k's policy on
round k's episodes to get round k+1's; RL^2 runs trials whose episode k measures round k. Figures are
mean +/- standard error over tasks (each task's figure is its mean over episodes).

    protocol = EvalProtocol(tasks, robots, steps=(0, 1, 2, 3), episodes=10, horizon=50, seed=1, version="eval")
    result = evaluate(learner, pool, protocol)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fleet.robots import RobotSpec
from fleet.tasks import Task
from learner.interface import Collect, Learner
from learner.sampling import drive, requests_for
from learner.seeds import eval_seed
from workers.batch import Batch
from workers.pool import WorkerPool

FROM_SCRATCH = "from-scratch"
ORACLE = "oracle"  # the yardstick given the true task parameters (Learner.oracle)
ROBOT_AGNOSTIC = "robot-agnostic"  # MT-PPO told nothing over the same fleet: domain randomisation


def flatten(prefix: str, nested: dict) -> dict[str, float]:
    """Nested figures -> flat metric names joined by '/': {"a": {"b": 1}} -> {"prefix/a/b": 1.0}."""
    out: dict[str, float] = {}
    for key, value in nested.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out.update(flatten(name, value) if isinstance(value, dict) else {name: float(value)})
    return out


def stderr(values: Sequence[float]) -> float:
    values = np.asarray(values, np.float64)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


@dataclass
class EvalResult:
    """Per adaptation step: per-task mean returns and success rates."""

    steps: list[int]
    task_ids: list[str]
    returns: dict[int, list[float]] = field(default_factory=dict)
    successes: dict[int, list[float]] = field(default_factory=dict)
    env_steps: int = 0

    def summary(self) -> dict[int, dict[str, float]]:
        return {
            k: {
                "return_mean": float(np.mean(self.returns[k])),
                "return_stderr": stderr(self.returns[k]),
                "success_mean": float(np.mean(self.successes[k])),
                "success_stderr": stderr(self.successes[k]),
            }
            for k in self.steps
        }

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat MLflow metrics: eval/return_step1, eval/return_step1_stderr, ..."""
        figures = {}
        for k, s in self.summary().items():
            figures.update({f"return_step{k}": s["return_mean"], f"return_step{k}_stderr": s["return_stderr"],
                            f"success_step{k}": s["success_mean"], f"success_step{k}_stderr": s["success_stderr"]})
        return flatten(prefix, figures)

    def table(self) -> str:
        """A plain-text table, one row per adaptation step."""
        lines = [f"{'steps':>5}  {'return':>18}  {'success':>15}"]
        for k, s in self.summary().items():
            lines.append(
                f"{k:>5}  {s['return_mean']:>9.2f} ± {s['return_stderr']:<6.2f}  "
                f"{s['success_mean']:>6.2f} ± {s['success_stderr']:<5.2f}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "task_ids": self.task_ids,
            "summary": {str(k): v for k, v in self.summary().items()},
            "per_task_returns": {str(k): v for k, v in self.returns.items()},
            "per_task_success": {str(k): v for k, v in self.successes.items()},
            "env_steps": self.env_steps,
        }


@dataclass(frozen=True)
class EvalProtocol:
    """What an evaluation measures: `tasks` (task i on `robots[i]`), the adaptation rounds `steps` reported
    (rounds 0..max(steps) run), `episodes` per task and round, the episode `horizon`, the base `seed` of the
    requests (learner/seeds.py), the policy `version` prefix. `stream` replaces the seed stream the learner
    names (e.g. "tasks" for the per-task evaluation); `deterministic` = mean actions."""

    tasks: tuple[Task, ...]
    robots: tuple[RobotSpec, ...]
    steps: tuple[int, ...] = (0, 1, 2, 3)
    episodes: int = 10
    horizon: int = 50
    seed: int = 0
    version: str = "eval"
    stream: str = ""
    deterministic: bool = False

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("an evaluation needs at least one task")
        if len(self.robots) != len(self.tasks):
            raise ValueError(f"an evaluation pairs each task with a robot: got {len(self.robots)} robots for "
                             f"{len(self.tasks)} tasks")
        if not self.steps or min(self.steps) < 0 or self.episodes < 1:
            raise ValueError(f"evaluation steps must be non-negative and episodes positive, got steps "
                             f"{list(self.steps)} and episodes {self.episodes}")

    @property
    def rounds(self) -> int:
        return max(self.steps) + 1

    def named(self, name: str) -> EvalProtocol:
        """The same protocol for a baseline `name` (same tasks, robots, seeds; its own policy versions)."""
        return replace(self, version=f"{self.version}/{name}")


def evaluate(learner: Learner, pool: WorkerPool, protocol: EvalProtocol) -> EvalResult:
    """Drive `learner.adaptation` under `protocol` (no update of the learner's meta-parameters)."""
    p = protocol
    result = EvalResult(steps=list(p.steps), task_ids=[t.task_id for t in p.tasks])

    def requests(collect: Collect):
        stream = p.stream or collect.stream
        first = collect.measures[0] if collect.measures else 0
        return requests_for(collect, p.robots, p.horizon, lambda i: eval_seed(p.seed, stream, first, i),
                            p.deterministic)

    for collect, batches in drive(learner.adaptation(p.tasks, p.rounds, p.version, p.episodes), pool, requests):
        result.env_steps += sum(b.num_steps for b in batches)
        for j, k in enumerate(collect.measures):
            if k in p.steps:
                result.returns[k] = [measured(b.episode_returns(), j, len(collect.measures)) for b in batches]
                result.successes[k] = [measured(b.success, j, len(collect.measures)) for b in batches]
    missing = [k for k in p.steps if k not in result.returns]
    if missing:
        raise RuntimeError(f"{type(learner).__name__}.adaptation measured no episodes for rounds {missing}")
    return result


def measured(per_episode: np.ndarray, j: int, n: int) -> float:
    """Mean over the episodes that measure round j of a phase whose consecutive groups of n episodes measure
    rounds 0..n-1 (n = 1: every episode)."""
    values = per_episode if n == 1 else per_episode.reshape(-1, n)[:, j]
    return float(values.mean())


def evaluate_baselines(baselines: dict[str, Learner], pool: WorkerPool,
                       protocol: EvalProtocol) -> dict[str, EvalResult]:
    """Each baseline (learner/builder.py builds the from-scratch one and wraps PolicyWeights) under the
    method's protocol: same held-out tasks and robots, same steps, episodes and request seeds (so the same
    env resets and noise streams). Returns name -> EvalResult, in order."""
    return {name: evaluate(model, pool, protocol.named(name)) for name, model in baselines.items()}


def phase_figures(phases: Sequence[tuple[Collect, list[Batch]]]) -> dict[str, float]:
    """Per collected phase (by `label`, else phase name): mean return and success over its tasks."""
    out: dict[str, float] = {}
    for collect, batches in phases:
        label = collect.label or collect.phase
        out[f"{label}_return"] = float(np.mean([b.mean_return() for b in batches]))
        out[f"{label}_success"] = float(np.mean([b.success_rate() for b in batches]))
    return out


def final_report(final: EvalResult, baselines: dict[str, EvalResult]) -> dict:
    """`eval/final.json`: the method's result (top level, as before) plus each baseline's, with per-task
    returns per step for all of them."""
    return {**final.to_dict(), "baselines": {name: result.to_dict() for name, result in baselines.items()}}


def baseline_metrics(baselines: dict[str, EvalResult]) -> dict[str, float]:
    """Flat MLflow metrics of the baselines: eval_baseline/from-scratch/return_step1, ..."""
    return {k: v for name, result in baselines.items() for k, v in result.metrics(f"eval_baseline/{name}").items()}


def oracle_fraction(value: float, scratch: float, oracle: float) -> float | None:
    """Where `value` lies between the from-scratch baseline (0) and the oracle (1): (v - s) / (o - s). A plain
    ratio v / o means nothing when returns can be negative (reach: -8 untrained, +46 oracle); this one puts every
    family on one scale. None when the oracle is no better than scratch (nothing to measure against)."""
    span = oracle - scratch
    return None if not span > 1e-9 else (value - scratch) / span


def comparison_table(method: str, final: EvalResult, baselines: dict[str, EvalResult]) -> str:
    """The method and its baselines, one row per (model, round): return, success and, with both yardsticks,
    the return as a fraction of the oracle (from-scratch = 0, oracle = 1, same round)."""
    rows = {method: final.summary(), **{name: r.summary() for name, r in baselines.items()}}
    yardsticks = FROM_SCRATCH in rows and ORACLE in rows
    width = max(len(name) for name in rows)
    header = f"{'model':<{width}}  {'round':>5}  {'return':>18}  {'success':>15}"
    lines = [header + ("  of oracle" if yardsticks else "")]
    for name, summary in rows.items():
        for k, s in summary.items():
            line = (f"{name:<{width}}  {k:>5}  {s['return_mean']:>9.2f} ± {s['return_stderr']:<6.2f}  "
                    f"{s['success_mean']:>6.2f} ± {s['success_stderr']:<5.2f}")
            if yardsticks and k in rows[ORACLE] and k in rows[FROM_SCRATCH]:
                frac = oracle_fraction(s["return_mean"], rows[FROM_SCRATCH][k]["return_mean"],
                                       rows[ORACLE][k]["return_mean"])
                line += f"  {frac:>9.2f}" if frac is not None else f"  {'n/a':>9}"
            lines.append(line)
    return "\n".join(lines)
