"""`fleet adapt` for the kinds that adapt by inference on the robot, with no gradient step and no learner.

The protocol (:func:`context_adaptation`, as `fleet run --adapt`): before-episodes unadapted, N context episodes
through the safety layer, after-episodes on the before-episodes' seeds; what is registered per kind:

- PEARL (adaptation "posterior"): the meta-policy's weights plus the posterior over z it inferred (manifest
  ``posterior``);
- belief ("fixed task vector"): its task-conditioned actor with the task vector fixed to the belief's mean
  (:func:`fixed_actor`);
- RMA ("fixed latent"): its z-conditioned actor with z fixed to the adaptation module's mean estimate over every step of
  the context episodes (:func:`fixed_latent_actor`): a robot-specific version that needs no history.

Both fixed-vector versions use one mechanism, the manifest's ``conditioning.fixed`` (policy.driver).
:data:`ON_ROBOT` maps each way a kind adapts by inference (``policy.kinds.PolicyKind.adaptation``) to its job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from deploy.adapt_record import INHERITED, Adapted, AdaptResult, EpisodeFigures, register_adapted
from deploy.connect import connect_robot
from deploy.safety import SafetyConfig
from fleet.tasks import Task
from learner.builder import task_distribution
from policy import PolicyWeights
from policy.artifact import PolicyArtifact
from policy.taskvec import TaskVectorEncoder


def context_adaptation(meta: PolicyArtifact, address: str, task: Task, episodes: int, seed: int, acting=None):
    """The on-robot protocol of the policies that adapt by inference (PEARL, belief, RMA), as `fleet run --adapt`:
    `episodes` before-episodes unadapted, `episodes` context episodes through the safety layer, then as many
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


def adapt_pearl(registry, resolved, meta, cfg, address, task, rid, episodes, seed) -> AdaptResult:
    """PEARL's adaptation (:func:`context_adaptation`): the posterior q(z | context) from the numpy encoder,
    evaluated against z from the prior on the same seeds; the adapted artifact is the meta-policy's weights plus
    the inferred posterior (its manifest's ``posterior``: mu, var and the z it acts with)."""
    before, adapted, after = context_adaptation(meta, address, task, episodes, seed)
    posterior = {"mu": adapted["mu"], "var": adapted["var"], "z": adapted["z"], "context_episodes": episodes,
                 "transitions": adapted["transitions"], "collect_s": adapted["collect_s"],
                 "infer_s": adapted["infer_s"]}
    return register_adapted(registry, Adapted(resolved, meta, meta.weights, rid, task, EpisodeFigures(before),
                                              EpisodeFigures(after), episodes, 0, extra={"posterior": posterior}))


def actor_weights(meta: PolicyArtifact) -> PolicyWeights:
    """The context-conditioned actor inside a belief or RMA policy: an 'mlp' spec and its arrays only."""
    actor_spec = replace(meta.weights.spec, kind="mlp", model_sizes=(), privileged_dim=0, history=0, encoder_sizes=(),
                         dynamics_sizes=())
    arrays = {k: v for k, v in meta.weights.arrays.items() if k in actor_spec.weight_shapes()}
    return PolicyWeights(actor_spec, arrays, meta.weights.version)


def checked_vector(z, dim: int, what: str) -> np.ndarray:
    """`z` as `dim` finite float64s, or a ValueError naming `what` it is."""
    z = np.asarray(z, np.float64).reshape(-1)
    if z.shape != (dim,) or not np.all(np.isfinite(z)):
        raise ValueError(f"{what} must be {dim} finite numbers, got {z.tolist()}")
    return z


def fixed_actor(meta: PolicyArtifact, train: list[Task], z) -> tuple[PolicyWeights, dict]:
    """A belief policy's task-conditioned actor ('mlp', concat) and its manifest ``conditioning`` section: the
    params encoding training used (rebuilt from the training tasks `train`, checked against the belief's prior
    box) with ``fixed`` = the task vector `z` it acts with, so that `fleet run` needs no ``--task``."""
    spec = meta.weights.spec
    encoder = TaskVectorEncoder.from_tasks("params", [(t.family, t.task_id, dict(t.params)) for t in train])
    vectors = np.asarray([encoder.encode(t.params, t.family) for t in train])
    box = np.stack([meta.weights.arrays["belief.low"], meta.weights.arrays["belief.high"]])
    if encoder.dim != spec.context_dim or not np.allclose(np.stack([vectors.min(0), vectors.max(0)]), box, atol=1e-4):
        raise ValueError(f"the training tasks of policy {meta.weights.version!r} do not rebuild the task vectors it "
                         f"was trained on (prior box {box.tolist()}): cannot register its actor with a task vector")
    z = checked_vector(z, spec.context_dim, "the belief's mean")
    section = {"mode": "concat", **encoder.to_manifest(),
               "fixed": {"vector": z.tolist(), "from": "belief posterior mean (fleet adapt)",
                         "param_values": (z * encoder.std + encoder.mean).tolist()}}
    return actor_weights(meta), section


def fixed_latent_actor(meta: PolicyArtifact, z) -> tuple[PolicyWeights, dict]:
    """An RMA policy's z-conditioned actor ('mlp', its conditioning) and the manifest ``conditioning`` section that
    fixes z: no task encoding (z is the robot's latent, no task vector), so `fleet run` needs no ``--task``."""
    spec = meta.weights.spec
    z = checked_vector(z, spec.context_dim, "the RMA latent estimate")
    section = {"mode": spec.conditioning,
               "fixed": {"vector": z.tolist(), "from": "RMA adaptation module's mean estimate (fleet adapt)"}}
    return actor_weights(meta), section


def adapt_fixed(registry, resolved, meta, address, task, rid, episodes, seed,
                actor_of: Callable[[dict], tuple[PolicyWeights, dict]], record: str) -> AdaptResult:
    """Adaptation that registers an actor with a fixed context vector (:func:`context_adaptation`): `actor_of`
    turns what the context episodes inferred into (actor weights, ``conditioning`` section); `after` is that version
    on the before-episodes' seeds, and what was inferred goes into the manifest's section `record`."""
    from deploy.runtime import RobotRuntime

    built: dict = {}

    def acting(adapted: dict) -> RobotRuntime:
        built["weights"], built["conditioning"] = actor_of(adapted)
        manifest = {k: v for k, v in meta.manifest.items() if k not in INHERITED}
        artifact = PolicyArtifact.build(built["weights"], **{**manifest, "conditioning": built["conditioning"]})
        return RobotRuntime(artifact, SafetyConfig(), deterministic=True)

    before, adapted, after = context_adaptation(meta, address, task, episodes, seed, acting)
    inferred = {"mean": adapted["z"], "std": adapted["std"], "context_episodes": episodes,
                "transitions": adapted["transitions"], "collect_s": adapted["collect_s"],
                "infer_s": adapted["infer_s"], "policy_ms_per_step": adapted["policy_ms_per_step"]}
    extra = {"conditioning": built["conditioning"], record: inferred}
    return register_adapted(registry, Adapted(resolved, meta, built["weights"], rid, task, EpisodeFigures(before),
                                              EpisodeFigures(after), episodes, 0, extra))


def adapt_belief(registry, resolved, meta, cfg, address, task, rid, episodes, seed) -> AdaptResult:
    """A belief policy: before = a fresh belief per episode; the context episodes are one trial, the belief updated
    every step; the adapted version is its actor with the task vector fixed to the belief's mean."""
    train = task_distribution(cfg).tasks("train")
    return adapt_fixed(registry, resolved, meta, address, task, rid, episodes, seed,
                       lambda adapted: fixed_actor(meta, train, adapted["z"]), "belief")


def adapt_rma(registry, resolved, meta, cfg, address, task, rid, episodes, seed) -> AdaptResult:
    """An RMA policy: before = the published policy, adapting within each episode from its own history; the
    adapted version is its actor with z fixed to the mean estimate over the context episodes' steps."""
    return adapt_fixed(registry, resolved, meta, address, task, rid, episodes, seed,
                       lambda adapted: fixed_latent_actor(meta, adapted["z"]), "rma")


# a kind's adaptation (policy.kinds) -> its job when it adapts by inference on the robot (the other ways: deploy.adapt)
ON_ROBOT: dict[str, Callable[..., AdaptResult]] = {"posterior": adapt_pearl, "fixed task vector": adapt_belief,
                                                   "fixed latent": adapt_rma}
