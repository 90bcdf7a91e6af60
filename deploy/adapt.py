"""Few-shot adaptation of a registered meta-policy on one robot, registered with its lineage.

    fleet adapt models:/reach-maml@candidate --robot sim:kuka-7 --task goal=[0.6,0.1,0.35]

Collect N support episodes on the robot, take K policy-gradient steps (the meta-policy's own
inner step), evaluate adapted vs unadapted on fresh episodes, register the adapted version
(parent model/version, robot, task, figures as tags) and move `robot-<id>` only if adaptation
did not make things worse. Kinds that infer their task adapt without a gradient step: PEARL registers the
posterior over z; a belief policy registers its task-conditioned actor with the task vector fixed to the mean
of the belief N episodes left (:func:`fixed_actor`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import gymnasium as gym
import numpy as np

from deploy.connect import connect_robot, with_sim_defaults
from deploy.history import move_alias
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
from policy.taskvec import TaskVectorEncoder
from workers.batch import Batch
from workers.rollout import rollout

ADAPT_EXPERIMENT = "metafleet-adapt"
INHERITED = ("format", "policy", "version", "weights_sha256", "content_sha256")  # build()/save() write fresh ones


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
            seed: int, safety: SafetyLayer, deterministic: bool = False, phase: str = "support",
            context: tuple[float, ...] = ()) -> Batch:
    """`episodes` sequential episodes on one (possibly physical) robot, as one Batch (`context`: the task vector
    of a task-conditioned policy, built as training did: :func:`task_vector`)."""
    env, policy = RobotEnv(robot, horizon, safety), NumpyGaussianPolicy(weights)
    vector = np.asarray(context, np.float32) if context else None
    parts = [rollout([env], policy, task.params, horizon, request_seed(seed, i), deterministic, context=vector)
             for i in range(episodes)]
    for part in parts:
        part.pop("guard_trips", None)
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Batch(**arrays, task=task, robot=spec, policy_version=weights.version, phase=phase, context=tuple(context))


def task_vector(manifest: dict, spec, task: Task) -> tuple[float, ...]:
    """The task vector a task-conditioned policy sees for `task` (empty when it is task-agnostic), from the
    manifest's ``conditioning`` with the encoder training used (policy.taskvec)."""
    if spec.kind != "mlp" or spec.conditioning == "none":
        return ()
    section = manifest.get("conditioning")
    if not isinstance(section, dict):
        raise ValueError(f"the policy is {spec.conditioning!r}-conditioned but its manifest has no 'conditioning' "
                         "section to build task vectors with; re-publish it with this version of metafleet")
    return tuple(float(v) for v in TaskVectorEncoder.from_manifest(section).encode(task.params, task.family))


class EpisodeFigures:
    """Mean return and success of episodes run by the robot runtime (what `_register` reads of a Batch)."""

    def __init__(self, results: list[dict]):
        self.results = results

    def mean_return(self) -> float:
        return float(np.mean([r["return"] for r in self.results]))

    def success_rate(self) -> float:
        return float(np.mean([r["success"] for r in self.results]))


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


def adaptation_task(cfg, task_params: dict | None, robot_id: str, default_family: str | None = None) -> Task:
    """The task to adapt to: `task_params` (for a mixture of families, with `family=NAME` among them, else the
    manifest's `default_family`), or by default the first held-out task of the meta-policy's own split."""
    if task_params is None:
        first = task_distribution(cfg).tasks("test")[0]
        return Task(first.family, f"{robot_id}/adapt", dict(first.params))
    params = dict(task_params)
    families = [cfg.fleet.family] if isinstance(cfg.fleet.family, str) else sorted(cfg.fleet.family)
    fallback = families[0] if len(families) == 1 else default_family if default_family in families else None
    family = params.pop("family", fallback)
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
    task = adaptation_task(cfg, task_params, rid, manifest.get("default_family"))
    address = with_sim_defaults(address, family=task.family, model=spec.model)
    if meta.weights.spec.kind == "sac":  # PEARL: adaptation is inference of z on the robot, no gradient step
        return _adapt_pearl(registry, resolved, meta, address, task, rid, episodes, seed)
    if meta.weights.spec.kind == "belief":  # task inference: the belief's mean becomes a fixed task vector
        return _adapt_belief(registry, resolved, meta, cfg, address, task, rid, episodes, seed)
    context = task_vector(manifest, meta.weights.spec, task)
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
            support = collect(robot, weights, task, spec, episodes, horizon, request_seed(seed, k, 1), safety,
                              context=context)
            params, [weights] = learner.adapt([support], f"{rid}/step{k + 1}", params=params)
        evaluation_seed = request_seed(seed, 99)
        before = collect(robot, meta.weights, task, spec, episodes, horizon, evaluation_seed, safety, True, "eval",
                         context)
        after = collect(robot, weights, task, spec, episodes, horizon, evaluation_seed, safety, True, "eval", context)
    finally:
        robot.close()
    return _register(registry, resolved, meta, weights, rid, task, before, after, episodes, steps)


def context_adaptation(meta: PolicyArtifact, address: str, task: Task, episodes: int, seed: int, acting=None):
    """The on-robot protocol of the policies that adapt by inference (PEARL, belief), as `fleet run --adapt`:
    `episodes` before-episodes from the prior, `episodes` context episodes through the safety layer, then as many
    after-episodes on the before-episodes' seeds with the runtime `acting(adapted)` returns (default: the same
    runtime, acting on what it inferred). Returns (before, adapted, after) runtime results."""
    from deploy.runtime import RobotRuntime

    runtime = RobotRuntime(meta, SafetyConfig(), deterministic=True)
    try:
        robot = connect_robot(address)
    except OSError as exc:  # refused, unreachable, timed out, failed handshake
        raise ConnectionError(f"robot {address} is unreachable: {exc}") from None
    named = {**task.params, "family": task.family}
    first = seed + episodes  # evaluation seeds: after the context episodes', the same before and after
    try:
        runtime.check_robot(robot)
        runtime.use_prior(seed)
        before = [runtime.run_episode(robot, task=named, seed=first + i) for i in range(episodes)]
        adapted = runtime.adapt(robot, episodes, named, seed)
        after_runtime = runtime if acting is None else acting(adapted)
        after = [after_runtime.run_episode(robot, task=named, seed=first + i) for i in range(episodes)]
    finally:
        robot.close()
    return before, adapted, after


def _adapt_pearl(registry, resolved, meta, address, task, rid, episodes, seed) -> AdaptResult:
    """PEARL's adaptation (:func:`context_adaptation`): the posterior q(z | context) from the numpy encoder,
    evaluated against z from the prior on the same seeds; the adapted artifact is the meta-policy's weights plus
    the inferred posterior (its manifest's ``posterior``: mu, var and the z it acts with)."""
    before, adapted, after = context_adaptation(meta, address, task, episodes, seed)
    posterior = {"mu": adapted["mu"], "var": adapted["var"], "z": adapted["z"], "context_episodes": episodes,
                 "transitions": adapted["transitions"], "collect_s": adapted["collect_s"],
                 "infer_s": adapted["infer_s"]}
    return _register(registry, resolved, meta, meta.weights, rid, task, EpisodeFigures(before),
                     EpisodeFigures(after), episodes, 0, extra={"posterior": posterior})


def fixed_actor(meta: PolicyArtifact, train: list[Task], z) -> tuple[PolicyWeights, dict]:
    """A belief policy's task-conditioned actor ('mlp', concat) and its manifest ``conditioning`` section: the
    params encoding training used (rebuilt from the training tasks `train`, checked against the belief's prior
    box) with ``fixed`` = the task vector `z` it acts with, so that `fleet run` needs no ``--task``."""
    spec = meta.weights.spec
    actor_spec = replace(spec, kind="mlp", model_sizes=())
    arrays = {k: v for k, v in meta.weights.arrays.items() if k in actor_spec.weight_shapes()}
    encoder = TaskVectorEncoder.from_tasks("params", [(t.family, t.task_id, dict(t.params)) for t in train])
    vectors = np.asarray([encoder.encode(t.params, t.family) for t in train])
    box = np.stack([meta.weights.arrays["belief.low"], meta.weights.arrays["belief.high"]])
    if encoder.dim != spec.context_dim or not np.allclose(np.stack([vectors.min(0), vectors.max(0)]), box, atol=1e-4):
        raise ValueError(f"the training tasks of policy {meta.weights.version!r} do not rebuild the task vectors it "
                         f"was trained on (prior box {box.tolist()}): cannot register its actor with a task vector")
    z = np.asarray(z, np.float64).reshape(-1)
    if z.shape != (spec.context_dim,) or not np.all(np.isfinite(z)):
        raise ValueError(f"the belief's mean must be {spec.context_dim} finite numbers, got {z.tolist()}")
    section = {"mode": "concat", **encoder.to_manifest(),
               "fixed": {"vector": z.tolist(), "from": "belief posterior mean (fleet adapt)",
                         "param_values": (z * encoder.std + encoder.mean).tolist()}}
    return PolicyWeights(actor_spec, arrays, meta.weights.version), section


def _adapt_belief(registry, resolved, meta, cfg, address, task, rid, episodes, seed) -> AdaptResult:
    """A belief policy's adaptation (:func:`context_adaptation`): before = a fresh belief per episode; the context
    episodes are one trial, the belief updated every step; the adapted version is its actor with the task vector
    fixed to the belief's mean (:func:`fixed_actor`), and `after` is that version on the before-episodes' seeds."""
    from deploy.runtime import RobotRuntime

    built: dict = {}

    def acting(adapted: dict) -> RobotRuntime:
        built["weights"], built["conditioning"] = fixed_actor(meta, task_distribution(cfg).tasks("train"),
                                                              adapted["z"])
        manifest = {k: v for k, v in meta.manifest.items() if k not in INHERITED}
        artifact = PolicyArtifact.build(built["weights"], **{**manifest, "conditioning": built["conditioning"]})
        return RobotRuntime(artifact, SafetyConfig(), deterministic=True)

    before, adapted, after = context_adaptation(meta, address, task, episodes, seed, acting)
    belief = {"mean": adapted["z"], "std": adapted["std"], "context_episodes": episodes,
              "transitions": adapted["transitions"], "collect_s": adapted["collect_s"],
              "infer_s": adapted["infer_s"], "policy_ms_per_step": adapted["policy_ms_per_step"]}
    return _register(registry, resolved, meta, built["weights"], rid, task, EpisodeFigures(before),
                     EpisodeFigures(after), episodes, 0,
                     extra={"conditioning": built["conditioning"], "belief": belief})


def _register(registry, resolved, meta, weights, rid, task, before, after, episodes, steps,
              extra: dict | None = None) -> AdaptResult:
    parent_name = resolved.name or meta.manifest.get("registered_model", "metafleet")
    model = f"{parent_name}-adapted"
    figures = {"return_before": before.mean_return(), "return_after": after.mean_return(),
               "success_before": before.success_rate(), "success_after": after.success_rate()}
    lineage = {"parent_model": parent_name, "parent_version": resolved.version or "",
               "parent_sha256": meta.manifest["weights_sha256"], "parent_content_sha256": meta.digest,
               "robot_id": rid, "task": task.params,
               "adapt_episodes": episodes, "adapt_steps": steps}
    manifest = {k: v for k, v in meta.manifest.items() if k not in INHERITED}
    artifact = PolicyArtifact.build(weights, **{**manifest, "kind": "adapted-policy", "lineage": lineage,
                                                "code_version": git_commit(), **(extra or {})})
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
