"""Meta-evaluation: on held-out tasks, return and success after 0..k adaptation steps.

As in MAML's protocol, step k+1 adapts the step-k policy on the episodes it just collected,
then collects fresh episodes with the adapted policy. Figures are mean +/- standard error over
tasks (each task's figure is its mean over episodes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fleet.robots import RobotSpec
from fleet.tasks import Task
from learner.base import MetaLearner
from policy import PolicyWeights
from workers.batch import SampleRequest
from workers.pool import WorkerPool

FROM_SCRATCH = "from-scratch"


def request_seed(*keys: int) -> int:
    """A 32-bit seed derived from a tuple of ints (run seed, iteration, task, phase, ...)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


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
        out = {}
        for k, s in self.summary().items():
            out[f"{prefix}/return_step{k}"] = s["return_mean"]
            out[f"{prefix}/return_step{k}_stderr"] = s["return_stderr"]
            out[f"{prefix}/success_step{k}"] = s["success_mean"]
            out[f"{prefix}/success_step{k}_stderr"] = s["success_stderr"]
        return out

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


def meta_evaluate(
    learner: MetaLearner,
    pool: WorkerPool,
    tasks: Sequence[Task],
    robot: RobotSpec,
    steps: Sequence[int] = (0, 1, 2, 3),
    episodes: int = 10,
    horizon: int = 50,
    seed: int = 0,
    version: str = "eval",
    robots: Sequence[RobotSpec] | None = None,
) -> EvalResult:
    """Evaluate theta and its 1..max(steps) step adaptations on `tasks` (no theta update).

    A learner that adapts in context instead of by gradient steps (RL^2) defines
    `evaluate_in_context(pool, tasks, robot, steps, episodes, horizon, seed, version)`: there
    step k is the k-th episode of a trial (k context episodes seen). `robots` (one per task) pairs
    each task with its own robot of the fleet; default `robot` for every task.
    """
    robots = list(robots) if robots is not None else [robot] * len(tasks)
    in_context = getattr(learner, "evaluate_in_context", None)
    if in_context is not None:
        return in_context(pool, tasks, robot, steps, episodes, horizon, seed, version)
    result = EvalResult(steps=list(steps), task_ids=[t.task_id for t in tasks])
    weights = dict(zip((t.task_id for t in tasks), learner.weights_for(tasks, f"{version}/theta")))
    params = None
    for k in range(max(steps) + 1):
        requests = [
            SampleRequest(t, robots[i], weights[t.task_id].version, episodes, horizon, request_seed(seed, k, i, 7),
                          "eval", context=learner.context_for(t))
            for i, t in enumerate(tasks)
        ]
        batches = pool.sample(requests, {w.version: w for w in weights.values()})
        result.env_steps += sum(b.num_steps for b in batches)
        if k in steps:
            result.returns[k] = [b.mean_return() for b in batches]
            result.successes[k] = [b.success_rate() for b in batches]
        if k < max(steps):
            params, adapted = learner.adapt(batches, f"{version}/step{k + 1}", params=params)
            weights = {t.task_id: w for t, w in zip(tasks, adapted)}
    return result


# ---- baselines in the same protocol ------------------------------------------------------------------


def from_scratch_learner(learner: MetaLearner, seed: int = 0) -> MetaLearner:
    """A freshly initialised learner of `learner`'s class, architecture, config and inner step (on CPU):
    adapted by `meta_evaluate` it answers "what does meta-training buy?".

    It keeps `learner`'s observation normaliser (data statistics, not meta-learned weights), and is built
    under a forked torch RNG, so the training run's random stream (checkpointed) is left untouched."""
    from learner.trainer import make_learner  # the trainer imports this module

    spec = getattr(learner, "spec", None) or learner.policy.spec
    config = learner.config.model_copy(update={"device": "cpu", "placement": "driver"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = make_learner(spec, config, learner.train_tasks)
    arrays = learner.policy_weights("normaliser").arrays
    if "obs_mean" in arrays and hasattr(fresh.policy, "obs_mean"):
        with torch.no_grad():
            fresh.policy.obs_mean.copy_(torch.as_tensor(np.asarray(arrays["obs_mean"]), dtype=torch.float32))
            fresh.policy.obs_std.copy_(torch.as_tensor(np.asarray(arrays["obs_std"]), dtype=torch.float32))
    return fresh


def as_learner(model: MetaLearner | PolicyWeights, like: MetaLearner) -> MetaLearner:
    """A baseline model in a form `meta_evaluate` takes: a learner as it is (any algorithm, with its own
    task vectors and inner step), or task-agnostic `PolicyWeights` (e.g. a registered multi-task policy)
    loaded into a learner with `like`'s config, so it is adapted with the same inner step."""
    if isinstance(model, PolicyWeights):
        from learner.trainer import make_learner

        config = like.config.model_copy(update={"device": "cpu", "placement": "driver"})
        with torch.random.fork_rng(devices=[]):
            learner = make_learner(model.spec, config, like.train_tasks)
        learner.policy.load_weights(model)
        return learner
    if not all(hasattr(model, name) for name in ("adapt", "weights_for", "context_for")):
        raise TypeError(f"a baseline must be a learner (adapt, weights_for, context_for) or PolicyWeights, "
                        f"got {type(model).__name__}")
    return model


def evaluate_baselines(
    learner: MetaLearner,
    pool: WorkerPool,
    tasks: Sequence[Task],
    robot: RobotSpec,
    steps: Sequence[int] = (0, 1, 2, 3),
    episodes: int = 10,
    horizon: int = 50,
    seed: int = 0,
    version: str = "eval",
    robots: Sequence[RobotSpec] | None = None,
    models: dict[str, MetaLearner | PolicyWeights] | None = None,
    from_scratch: bool = True,
) -> dict[str, EvalResult]:
    """Baselines through `meta_evaluate` with the method's protocol: same held-out tasks and robots, same
    steps, episodes and request seeds (so the same env resets and noise streams).

    `from_scratch` adds FROM_SCRATCH (`from_scratch_learner`); `models` adds named baselines (a multi-task
    learner or its PolicyWeights, see `as_learner`). Returns name -> EvalResult, in that order."""
    baselines: dict[str, MetaLearner | PolicyWeights] = {}
    if from_scratch:
        baselines[FROM_SCRATCH] = from_scratch_learner(learner)
    baselines.update(models or {})
    return {
        name: meta_evaluate(as_learner(model, learner), pool, tasks, robot, steps, episodes, horizon, seed,
                            f"{version}/{name}", robots)
        for name, model in baselines.items()
    }


def final_report(final: EvalResult, baselines: dict[str, EvalResult]) -> dict:
    """`eval/final.json`: the method's result (top level, as before) plus each baseline's, with per-task
    returns per step for all of them."""
    return {**final.to_dict(), "baselines": {name: result.to_dict() for name, result in baselines.items()}}


def baseline_metrics(baselines: dict[str, EvalResult]) -> dict[str, float]:
    """Flat MLflow metrics of the baselines: eval_baseline/from-scratch/return_step1, ..."""
    return {k: v for name, result in baselines.items() for k, v in result.metrics(f"eval_baseline/{name}").items()}
