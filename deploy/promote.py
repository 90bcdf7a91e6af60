"""The promotion gate: an alias moves to a candidate version only if it evaluates better than
the alias's current holder on held-out tasks (or with --force). The decision and both figures
are recorded as tags on the candidate version."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from deploy.history import move_alias, not_found
from deploy.jobs import evaluate_model
from deploy.registry import Registry, RegistryError


@dataclass(frozen=True)
class GateEvaluation:
    """How the gate evaluates candidate and incumbent (both the same way: same held-out tasks and seed), and the
    plugin families the user allows their manifests to use (``allow_plugins`` / ``plugin_config``)."""

    steps: tuple[int, ...] = (0, 1)
    episodes: int = 10
    num_tasks: int = 10
    backend: str = "local"
    num_workers: int = 1
    allow_plugins: tuple[str, ...] = ()
    plugin_config: str | None = None


@dataclass
class PromotionDecision:
    model: str
    alias: str
    candidate: str
    incumbent: str | None
    candidate_return: float
    incumbent_return: float | None
    promoted: bool
    forced: bool
    reason: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def promote(model: str, version: str, alias: str = "production", force: bool = False,
            evaluation: GateEvaluation = GateEvaluation(), registry: Registry | None = None) -> PromotionDecision:
    """Evaluate candidate and incumbent as `evaluation` says (both verified and evaluated by
    :func:`deploy.jobs.evaluate_model`) and decide."""
    registry = registry or Registry()
    steps, episodes, num_tasks = evaluation.steps, evaluation.episodes, evaluation.num_tasks
    try:
        registry.client.get_model_version(model, version)
    except MlflowException as exc:
        if not not_found(exc):  # no answer, refused credentials: say so, not "does not exist"
            raise
        raise RegistryError(f"models:/{model}/{version} does not exist") from None
    try:
        incumbent = str(registry.client.get_model_version_by_alias(model, alias).version)
    except MlflowException as exc:
        if not not_found(exc):
            raise
        incumbent = None

    def score(v: str) -> float:
        result = evaluate_model(f"models:/{model}/{v}", "test", steps, episodes, num_tasks, evaluation.backend,
                                evaluation.num_workers, allow_plugins=evaluation.allow_plugins,
                                plugin_config=evaluation.plugin_config)
        return result.summary()[max(steps)]["return_mean"]

    candidate_return = score(version)
    incumbent_return = score(incumbent) if incumbent not in (None, version) else None
    if incumbent == version:
        promoted, reason = False, f"version {version} already holds @{alias}"
    elif force:
        promoted, reason = True, "forced"
    elif incumbent is None:
        promoted, reason = True, f"@{alias} was unset"
    elif candidate_return > incumbent_return:
        promoted, reason = True, f"candidate {candidate_return:.3f} > incumbent {incumbent_return:.3f}"
    else:
        promoted, reason = False, f"candidate {candidate_return:.3f} <= incumbent {incumbent_return:.3f}"
    if promoted:
        passed = incumbent_return is None or candidate_return > incumbent_return  # forced past a better one: False
        figures = {"candidate_version": version, "candidate_return": candidate_return, "incumbent_version": incumbent,
                   "incumbent_return": incumbent_return, "forced": force, "steps": ",".join(map(str, steps)),
                   "episodes": episodes, "held_out_tasks": num_tasks}
        move_alias(registry.client, model, alias, version, reason=reason, gate="promote", passed=passed,
                   figures=figures, command=f"fleet promote {model} --version {version} --alias {alias}"
                   + (" --force" if force else ""))
    tags = {"promote_alias": alias, "promote_decision": "promoted" if promoted else "rejected",
            "promote_reason": reason, "promote_candidate_return": f"{candidate_return:.4f}",
            "promote_incumbent_version": incumbent or "",
            "promote_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "promote_incumbent_return": "" if incumbent_return is None else f"{incumbent_return:.4f}"}
    for key, value in tags.items():
        registry.client.set_model_version_tag(model, version, key, value)
    return PromotionDecision(model, alias, version, incumbent, candidate_return, incumbent_return, promoted, force,
                             reason)
