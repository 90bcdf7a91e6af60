"""Few-shot adaptation of a registered meta-policy on one robot, registered with its lineage.

    fleet adapt models:/reach-maml@candidate --robot sim:kuka-7 --task goal=[0.6,0.1,0.35]

Collect N support episodes on the robot, take K policy-gradient steps (the meta-policy's own
inner step), evaluate adapted vs unadapted on fresh episodes, register the adapted version
(parent model/version, robot, task, figures as tags) and move `robot-<id>` only if adaptation
did not make things worse. Kinds that adapt by inference on the robot take no gradient step
(deploy/adapt_context.py, :data:`deploy.adapt_context.ON_ROBOT`): PEARL registers the posterior over z; a belief
policy its actor with the task vector fixed to the belief's mean; an RMA policy its actor with z fixed to the
adaptation module's mean estimate. Registration (lineage, figures, aliases): deploy/adapt_record.py.
"""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np

from deploy.adapt_context import ON_ROBOT
from deploy.adapt_record import Adapted, AdaptResult, register_adapted
from deploy.connect import check_address, connect_robot, with_sim_defaults
from deploy.manifest_config import manifest_config
from deploy.registry import Registry
from deploy.robot import Robot
from deploy.safety import SafetyConfig, SafetyLayer
from fleet.robots import RobotSpec
from fleet.tasks import Task
from learner.builder import make_learner, task_distribution
from learner.seeds import derive_seed as request_seed
from policy import NumpyGaussianPolicy, PolicyWeights, policy_kind
from policy.artifact import PolicyArtifact
from policy.taskvec import TaskVectorEncoder
from workers.batch import Batch
from workers.rollout import rollout


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
    if not policy_kind(spec).task_vector or spec.conditioning == "none":
        return ()
    section = manifest.get("conditioning")
    if not isinstance(section, dict):
        raise ValueError(f"the policy is {spec.conditioning!r}-conditioned but its manifest has no 'conditioning' "
                         "section to build task vectors with; re-publish it with this version of metafleet")
    return tuple(float(v) for v in TaskVectorEncoder.from_manifest(section).encode(task.params, task.family))


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
    kind = policy_kind(meta.weights.spec)
    if kind.adaptation == "in trial":  # e.g. RL^2: nothing to take gradient steps on; say so before touching a robot
        raise ValueError(f"{uri} is a recurrent in-context policy ({manifest.get('algorithm', 'rl2')}): it adapts in "
                         "its hidden state over a trial, not by gradient steps, so `fleet adapt` does not apply; "
                         "measure its in-context adaptation with `fleet eval`")
    cfg = manifest_config(manifest, uri, allow_plugins, plugin_config)
    rid = robot_id_of(address, robot_id)
    spec = RobotSpec.from_dict({**manifest.get("robot", {}), "robot_id": rid})
    task = adaptation_task(cfg, task_params, rid, manifest.get("default_family"))
    address = with_sim_defaults(address, family=task.family, model=spec.model)
    check_address(address)  # a bad address (e.g. a robot id its fleet file lacks) fails before any episode
    in_context = ON_ROBOT.get(kind.adaptation)
    if in_context is not None:  # adaptation is inference on the robot (PEARL, belief, RMA), no gradient step
        return in_context(registry, resolved, meta, cfg, address, task, rid, episodes, seed)
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
    return register_adapted(registry, Adapted(resolved, meta, weights, rid, task, before, after, episodes, steps))
