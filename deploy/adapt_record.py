"""Registering an adapted version (`fleet adapt`): its lineage, its before/after figures, its aliases.

Every adaptation path (gradient steps, deploy/adapt.py; in-context inference, deploy/adapt_context.py) ends here,
so every adapted version carries the same lineage and figures whatever its kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from deploy.history import move_alias
from deploy.registry import Registry, ResolvedModel, git_commit
from fleet.tasks import Task
from learner.tracking import Tracker
from policy import PolicyWeights
from policy.artifact import PolicyArtifact

ADAPT_EXPERIMENT = "metafleet-adapt"
INHERITED = ("format", "policy", "version", "weights_sha256", "content_sha256")  # build()/save() write fresh ones


class EpisodeFigures:
    """Mean return and success of episodes run by the robot runtime (what `register_adapted` reads of a Batch)."""

    def __init__(self, results: list[dict]):
        self.results = results

    def mean_return(self) -> float:
        return float(np.mean([r["return"] for r in self.results]))

    def success_rate(self) -> float:
        return float(np.mean([r["success"] for r in self.results]))


class Figures(Protocol):
    """What registration reads of evaluation episodes: a Batch, or :class:`EpisodeFigures`."""

    def mean_return(self) -> float: ...

    def success_rate(self) -> float: ...


@dataclass(frozen=True)
class Adapted:
    """What one adaptation of the meta-policy `meta` (registered as `resolved`) produced on robot `robot_id`:
    `weights` and the manifest sections `extra` of the adapted artifact, its before/after figures on `task`, and
    the `episodes` / gradient `steps` it took."""

    resolved: ResolvedModel
    meta: PolicyArtifact
    weights: PolicyWeights
    robot_id: str
    task: Task
    before: Figures
    after: Figures
    episodes: int
    steps: int
    extra: dict = field(default_factory=dict)


@dataclass
class AdaptResult:
    parent: str
    model: str
    version: str
    robot_id: str
    task: dict
    return_before: float
    return_after: float
    success_before: float
    success_after: float
    alias_moved: bool
    episodes: int
    steps: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def register_adapted(registry: Registry, adapted: Adapted) -> AdaptResult:
    """Register the adapted weights as the adapted version of the meta-policy on its robot (model
    `<parent>-adapted`), with its lineage and before/after figures as tags; `candidate` moves to it,
    `robot-<robot_id>` only if adaptation did not make things worse."""
    resolved, meta, rid, task, episodes, steps = (adapted.resolved, adapted.meta, adapted.robot_id, adapted.task,
                                                  adapted.episodes, adapted.steps)
    before, after = adapted.before, adapted.after
    parent_name = resolved.name or meta.manifest.get("registered_model", "metafleet")
    model = f"{parent_name}-adapted"
    figures = {"return_before": before.mean_return(), "return_after": after.mean_return(),
               "success_before": before.success_rate(), "success_after": after.success_rate()}
    lineage = {"parent_model": parent_name, "parent_version": resolved.version or "",
               "parent_sha256": meta.manifest["weights_sha256"], "parent_content_sha256": meta.digest,
               "robot_id": rid, "task": task.params,
               "adapt_episodes": episodes, "adapt_steps": steps}
    manifest = {k: v for k, v in meta.manifest.items() if k not in INHERITED}
    artifact = PolicyArtifact.build(adapted.weights, **{**manifest, "kind": "adapted-policy", "lineage": lineage,
                                                        "code_version": git_commit(), **adapted.extra})
    tracker = Tracker(registry.uri, ADAPT_EXPERIMENT, run_name=f"adapt-{rid}")
    try:
        tracker.log_params({k: str(v) for k, v in lineage.items()})
        tracker.log_metrics(figures, step=steps)
        tags = {**{k: str(v) for k, v in lineage.items()}, **{k: f"{v:.4f}" for k, v in figures.items()},
                "kind": "adapted-policy", "family": task.family}
        tracker.set_tags(tags)
        version = registry.publish(model, artifact, tracker.run_id, tags)
        moved = figures["return_after"] >= figures["return_before"]
        gate = {**figures, "gain": figures["return_after"] - figures["return_before"], "robot": rid,
                "parent": f"{parent_name}/{resolved.version or ''}", "episodes": episodes, "steps": steps}
        command = f"fleet adapt {resolved.uri} --robot-id {rid} --episodes {episodes} --steps {steps}"
        move_alias(registry.client, model, "candidate", version, reason=f"newest adapted version (robot {rid})",
                   gate="adapt", passed=None, figures=gate, command=command)
        if moved:
            move_alias(registry.client, model, f"robot-{rid}", version, gate="adapt", passed=True, figures=gate,
                       reason=f"adaptation did not make it worse: return {figures['return_after']:.3f} after >= "
                              f"{figures['return_before']:.3f} before", command=command)
        registry.client.set_model_version_tag(model, version, "robot_alias_moved", str(moved).lower())
    finally:
        tracker.close()
    return AdaptResult(f"models:/{parent_name}/{resolved.version}", model, version, rid, task.params,
                       figures["return_before"], figures["return_after"], figures["success_before"],
                       figures["success_after"], moved, episodes, steps)
