"""Few-shot adaptation of a registered meta-policy on one robot, registered with its lineage.

    fleet adapt models:/reach-maml@candidate --robot sim:kuka-7 --task goal=[0.6,0.1,0.35]

Collect N support episodes on the robot, take K policy-gradient steps (the meta-policy's own
inner step), evaluate adapted vs unadapted on fresh episodes, register the adapted version
(parent model/version, robot, task, figures as tags) and move `robot-<id>` only if adaptation
did not make things worse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from deploy.connect import connect_robot, with_sim_defaults
from deploy.manifest_config import manifest_config
from deploy.registry import Registry, git_commit
from deploy.robot import Robot
from deploy.safety import SafetyConfig, SafetyLayer
from fleet.robots import RobotSpec
from fleet.tasks import Task
from learner.builder import make_learner, task_distribution
from learner.seeds import derive_seed as request_seed
from learner.tracking import Tracker
from policy import NumpyGaussianPolicy, PolicyWeights
from policy.artifact import PolicyArtifact
from workers.batch import Batch
from workers.rollout import rollout

ADAPT_EXPERIMENT = "metafleet-adapt"


class RobotEnv(gym.Env):
    """The Robot protocol seen through the gymnasium API that `workers.rollout` steps.

    Exploration actions pass the same safety layer as deployed policies (schema check, finite,
    clipped, rate-limited) before they reach the robot; the learner still sees the sampled action.
    """

    def __init__(self, robot: Robot, horizon: int, safety: SafetyLayer):
        self.robot, self.horizon, self.safety, self.t = robot, horizon, safety, 0
        self.obs = None

    def reset(self, *, seed=None, options=None):
        self.t = 0
        self.safety.reset()
        self.obs = self.safety.check_observation(self.robot.reset(task=(options or {}).get("task"), seed=seed))
        return self.obs, {}

    def step(self, action):
        safe_action, _ = self.safety.filter(self.obs, np.asarray(action))
        step = self.robot.act(safe_action)
        self.obs = self.safety.check_observation(step.observation)
        self.t += 1
        return self.obs, step.reward, False, bool(step.done) or self.t >= self.horizon, step.info


def safety_for(manifest: dict) -> SafetyLayer:
    spaces = manifest["spaces"]
    return SafetyLayer(tuple(spaces["observation"]["shape"]), np.asarray(spaces["action"]["low"]),
                       np.asarray(spaces["action"]["high"]), SafetyConfig())


def collect(robot: Robot, weights: PolicyWeights, task: Task, spec: RobotSpec, episodes: int, horizon: int,
            seed: int, safety: SafetyLayer, deterministic: bool = False, phase: str = "support") -> Batch:
    """`episodes` sequential episodes on one (possibly physical) robot, as one Batch."""
    env, policy = RobotEnv(robot, horizon, safety), NumpyGaussianPolicy(weights)
    parts = [rollout([env], policy, task.params, horizon, request_seed(seed, i), deterministic)
             for i in range(episodes)]
    for part in parts:
        part.pop("guard_trips", None)
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Batch(**arrays, task=task, robot=spec, policy_version=weights.version, phase=phase)


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


def robot_id_of(address: str, override: str | None = None) -> str:
    raw = override or (address.split(":", 1)[1].split("?")[0] if address.startswith("sim:") else address)
    return re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-") or "robot"


def adaptation_task(cfg, task_params: dict | None, robot_id: str) -> Task:
    """The task to adapt to: `task_params` (for a mixture of families, with `family=NAME` among them), or
    by default the first held-out task of the meta-policy's own split."""
    if task_params is None:
        first = task_distribution(cfg).tasks("test")[0]
        return Task(first.family, f"{robot_id}/adapt", dict(first.params))
    params = dict(task_params)
    families = [cfg.fleet.family] if isinstance(cfg.fleet.family, str) else sorted(cfg.fleet.family)
    family = params.pop("family", families[0] if len(families) == 1 else None)
    if family not in families:
        raise ValueError(f"the policy was trained on famil{'y' if len(families) == 1 else 'ies'} {families}: "
                         f"pass --task family=NAME with one of them (got {family!r})")
    return Task(family, f"{robot_id}/adapt", params)


def adapt_on_robot(uri: str, address: str, task_params: dict | None = None, episodes: int = 10, steps: int = 1,
                   robot_id: str | None = None, seed: int = 0, registry: Registry | None = None,
                   allow_plugins: tuple[str, ...] = (), plugin_config: str | None = None) -> AdaptResult:
    """Adapt the verified meta-policy at ``uri`` on the robot at ``address`` and register the result.

    A plugin family the manifest names is imported only if ``allow_plugins`` or the user's ``plugin_config``
    names it (see :mod:`deploy.manifest_config`).
    """
    registry = registry or Registry()
    resolved = registry.resolve(uri)
    meta = PolicyArtifact.load(registry.download(resolved), expected_digest=resolved.sha256)
    manifest = meta.manifest
    if meta.weights.spec.kind == "gru":  # RL^2: nothing to take gradient steps on; say so before touching a robot
        raise ValueError(f"{uri} is a recurrent in-context policy ({manifest.get('algorithm', 'rl2')}): it adapts in "
                         "its hidden state over a trial, not by gradient steps, so `fleet adapt` does not apply; "
                         "measure its in-context adaptation with `fleet eval`")
    cfg = manifest_config(manifest, uri, allow_plugins, plugin_config)
    rid = robot_id_of(address, robot_id)
    spec = RobotSpec.from_dict({**manifest.get("robot", {}), "robot_id": rid})
    task = adaptation_task(cfg, task_params, rid)
    address = with_sim_defaults(address, family=task.family, model=spec.model)
    learner = make_learner(meta.weights.spec, cfg.learner)
    learner.policy.load_weights(meta.weights)
    horizon = cfg.fleet.horizon
    try:
        robot = connect_robot(address)
    except OSError as exc:  # refused, unreachable, timed out, failed handshake
        raise ConnectionError(f"robot {address} is unreachable: {exc}") from None
    safety = safety_for(manifest)
    try:
        weights, params = meta.weights, None
        for k in range(steps):  # MAML's protocol: each step adapts on episodes of the current policy
            support = collect(robot, weights, task, spec, episodes, horizon, request_seed(seed, k, 1), safety)
            params, [weights] = learner.adapt([support], f"{rid}/step{k + 1}", params=params)
        evaluation_seed = request_seed(seed, 99)
        before = collect(robot, meta.weights, task, spec, episodes, horizon, evaluation_seed, safety, True, "eval")
        after = collect(robot, weights, task, spec, episodes, horizon, evaluation_seed, safety, True, "eval")
    finally:
        robot.close()
    return _register(registry, resolved, meta, weights, rid, task, before, after, episodes, steps)


def _register(registry, resolved, meta, weights, rid, task, before, after, episodes, steps) -> AdaptResult:
    parent_name = resolved.name or meta.manifest.get("registered_model", "metafleet")
    model = f"{parent_name}-adapted"
    figures = {"return_before": before.mean_return(), "return_after": after.mean_return(),
               "success_before": before.success_rate(), "success_after": after.success_rate()}
    lineage = {"parent_model": parent_name, "parent_version": resolved.version or "",
               "parent_sha256": meta.manifest["weights_sha256"], "parent_content_sha256": meta.digest,
               "robot_id": rid, "task": task.params,
               "adapt_episodes": episodes, "adapt_steps": steps}
    inherited = ("format", "policy", "version", "weights_sha256", "content_sha256")  # save() writes fresh ones
    manifest = {k: v for k, v in meta.manifest.items() if k not in inherited}
    artifact = PolicyArtifact.build(weights, **{**manifest, "kind": "adapted-policy", "lineage": lineage,
                                                "code_version": git_commit()})
    tracker = Tracker(registry.uri, ADAPT_EXPERIMENT, run_name=f"adapt-{rid}")
    try:
        tracker.log_params({k: str(v) for k, v in lineage.items()})
        tracker.log_metrics(figures, step=steps)
        tags = {**{k: str(v) for k, v in lineage.items()}, **{k: f"{v:.4f}" for k, v in figures.items()},
                "kind": "adapted-policy", "family": task.family}
        tracker.set_tags(tags)
        version = registry.publish(model, artifact, tracker.run_id, tags, aliases=("candidate",))
        moved = figures["return_after"] >= figures["return_before"]
        if moved:
            registry.client.set_registered_model_alias(model, f"robot-{rid}", version)
        registry.client.set_model_version_tag(model, version, "robot_alias_moved", str(moved).lower())
    finally:
        tracker.close()
    return AdaptResult(f"models:/{parent_name}/{resolved.version}", model, version, rid, task.params,
                       figures["return_before"], figures["return_after"], figures["success_before"],
                       figures["success_after"], moved, episodes, steps)
