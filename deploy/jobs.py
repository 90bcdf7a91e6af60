"""The jobs behind the CLI: train-and-register, and evaluate a registered policy.

These sit at the top of the stack (they use fleet, workers, learner and the registry); the
CLI only parses arguments and calls one of them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import fleet
from deploy.history import move_alias
from deploy.manifest_config import check_run_plugins, manifest_config
from deploy.registry import Registry, git_commit
from fleet.tasks import family_weights
from learner.builder import held_out_robots, make_learner, robot_of, task_distribution
from learner.conditioning import conditioning_manifest
from learner.config import Config, ConfigError, load_config
from learner.evaluation import EvalProtocol, EvalResult, evaluate
from learner.published import published_learner
from learner.trainer import TrainResult, train
from policy import OBS_CLIP
from policy.artifact import PolicyArtifact
from policy.taskvec import mixture_default
from workers.backends import make_pool


@dataclass
class TrainJobResult:
    train: TrainResult
    model_name: str
    model_version: str | None  # None: nothing registered (the single-task baseline is a measurement)


def family_label(cfg: Config) -> str:
    """`reach`, or `direction+velocity` for a mixture (a registry tag is one string)."""
    family = cfg.fleet.family
    return family if isinstance(family, str) else "+".join(sorted(family))


def robot_text(cfg: Config) -> str:
    """What the run, the registry tag and the manifest call the robot: its model, or "none (plugin env)" for a
    plugin family whose envs take no robot."""
    return fleet.robot_label(next(iter(family_weights(cfg.fleet.family))), robot_of(cfg))


def meta_policy_artifact(cfg: Config, result: TrainResult) -> PolicyArtifact:
    """Everything a robot or `fleet eval` needs to run and adapt the meta-policy."""
    weights = result.learner.policy_weights(f"{result.run_id}/it{result.iterations}")
    return PolicyArtifact.build(
        weights,
        kind="meta-policy",
        family=family_label(cfg),
        robot=robot_of(cfg).to_dict(),
        robot_label=robot_text(cfg),
        spaces=result.spaces,
        algorithm=cfg.learner.algorithm,
        normalizer={"arrays": ["obs_mean", "obs_std"], "clip": OBS_CLIP, "applied": "clip((obs - mean) / std)"},
        # a task-conditioned policy: how the robot builds its task vector (None: the task is inferred from reward)
        conditioning=conditioning_manifest(weights.spec, getattr(result.learner, "encoder", None)),
        default_family=mixture_default(cfg.fleet.family),  # what `fleet run` runs of a mixture unless told
        adaptation={"inner_lr": cfg.learner.inner_lr, "gamma": cfg.learner.gamma,
                    "gae_lambda": cfg.learner.gae_lambda, "inner_steps": cfg.learner.inner_steps},
        fleet=cfg.fleet.model_dump(mode="json"),
        learner=cfg.learner.model_dump(mode="json"),
        run_id=result.run_id,
        code_version=git_commit(),
    )


def run_training(cfg: Config, resume_run_id: str | None = None) -> TrainJobResult:
    """Train (or resume), then register the meta-policy with its figures as tags."""
    result = train(cfg, resume_run_id)
    tracker = result.tracker
    tracker.set_tags({"robot": robot_text(cfg)})
    if cfg.learner.algorithm == "single_task":  # one network per training task: no one policy to deploy
        tracker.close()
        return TrainJobResult(result, cfg.tracking.registered_model, None)
    try:
        summary = result.final_eval.summary()
        tags = {"family": family_label(cfg), "algorithm": cfg.learner.algorithm, "kind": "meta-policy",
                "git_commit": git_commit(), "robot": robot_text(cfg), "env_steps": result.env_steps,
                "iterations": result.iterations}
        for k, s in summary.items():
            tags[f"eval_return_step{k}"] = f"{s['return_mean']:.3f}"
            tags[f"eval_return_step{k}_stderr"] = f"{s['return_stderr']:.3f}"
            tags[f"eval_success_step{k}"] = f"{s['success_mean']:.3f}"
        registry = Registry(tracker.uri)
        artifact = meta_policy_artifact(cfg, result)
        version = registry.publish(cfg.tracking.registered_model, artifact, result.run_id, tags)
        move_alias(registry.client, cfg.tracking.registered_model, "candidate", version, gate="train", passed=None,
                   reason=f"newest meta-policy of training run {result.run_id}", command=f"fleet train ({cfg.name})",
                   figures={"env_steps": result.env_steps, "iterations": result.iterations,
                            **{f"held_out_return_step{k}": s["return_mean"] for k, s in summary.items()},
                            **{f"held_out_success_step{k}": s["success_mean"] for k, s in summary.items()}})
        tracker.set_tags({"registered_model": cfg.tracking.registered_model, "registered_version": version})
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()
    return TrainJobResult(result, cfg.tracking.registered_model, version)


def config_of_run(run_id: str, overrides: list[str], tracking_uri: str | None = None,
                  allow_plugins: tuple[str, ...] = ()) -> Config:
    """The resolved config a run logged (for --resume), with new overrides applied.

    The stored config is data from the tracking store: a plugin family or curriculum it names is imported (by
    config validation) only if ``allow_plugins`` names it (:func:`deploy.manifest_config.check_run_plugins`)."""
    import mlflow
    import yaml

    from learner.config import apply_overrides
    from learner.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="config.yaml", dst_path=tempfile.mkdtemp()
        )
    except Exception as exc:
        raise ConfigError(f"cannot resume run {run_id!r}: its config.yaml is not available ({exc})") from None
    with open(path) as handle:
        data = yaml.safe_load(handle)
    if isinstance(data, dict):  # checked before validation, which imports what the config names
        check_run_plugins(data, apply_overrides(data, overrides), run_id, allow_plugins)
    return load_config(data=data, overrides=overrides)


def evaluate_model(uri: str, split: str = "test", steps: tuple[int, ...] = (0, 1, 2, 3), episodes: int = 10,
                   num_tasks: int = 10, backend: str = "ray", num_workers: int = 2, seed: int = 0,
                   allow_plugins: tuple[str, ...] = (), plugin_config: str | None = None) -> EvalResult:
    """Meta-evaluate a registered (or local) policy on its family's held-out tasks, on the robots training's
    held-out evaluation uses (:func:`learner.builder.held_out_robots`: the fleet's held-out robots, ``split:
    test``, in turn; the one robot of a one-robot fleet); training tasks (``split="train"``) on the first
    training robot, as training's per-task evaluation. An in-context kind (belief, RMA) is evaluated from its
    numpy weights as its learner evaluates it (:func:`learner.published.published_learner`); the other kinds by
    their learner rebuilt around the weights.

    The artifact is verified first (content digest); a plugin family its manifest names is imported only if
    ``allow_plugins`` or the user's ``plugin_config`` file names it (see :mod:`deploy.manifest_config`).
    """
    artifact = Registry().load(uri)
    manifest = artifact.manifest
    learner_section = manifest.get("learner") if isinstance(manifest.get("learner"), dict) else {}
    trial = learner_section.get("trial_episodes", 1)  # train sizes are unused here but must be whole RL^2 trials
    cfg = manifest_config(manifest, uri, allow_plugins, plugin_config,
                          train={"episodes_per_task": trial, "eval_episodes": trial})
    learner = published_learner(artifact.weights)  # numpy inference only: nothing of the learner to rebuild
    if learner is None:
        learner = make_learner(artifact.weights.spec, cfg.learner)
        learner.policy.load_weights(artifact.weights)
    tasks = task_distribution(cfg).tasks(split)[:num_tasks]
    # as training evaluates: held-out tasks on the held-out robots, training tasks on the first training robot
    robots = tuple(held_out_robots(cfg, len(tasks)) if split == "test" else [robot_of(cfg)] * len(tasks))
    with make_pool(backend, num_workers) as pool:
        protocol = EvalProtocol(tuple(tasks), robots, tuple(steps), episodes, cfg.fleet.horizon, seed)
        return evaluate(learner, pool, protocol)
