"""`fleet`: the command-line front door. Parse, validate, call one job function per command.

This module holds the parser, `main`, and the training-side commands (`train`, `eval`, `tasks`);
`metafleet.registry_commands` has adapt/promote/pull and `metafleet.robot_commands` run/serve-robot.
Exit codes (`metafleet.args`): 0 success, 2 bad input (config, names, URIs, paths: nothing was started or
changed), 1 a failure while running, 130/143 stopped by SIGINT/SIGTERM (after a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from metafleet import fleet_commands, registry_commands, robot_commands, sweep_commands
from metafleet.args import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, bad_input, error
from metafleet.registry_commands import add_plugin_args
from metafleet.registry_errors import explain, registry_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description="metafleet: meta-train one policy for a robot fleet")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_training_parsers(sub)
    for commands in (registry_commands, robot_commands, fleet_commands, sweep_commands):
        commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow logs every run start and system-metrics thread at INFO; keep job output readable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if args.verbose else "WARNING")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def add_training_parsers(sub) -> None:
    """Add the train, eval, tasks subcommands to an argparse subparsers object."""
    train = sub.add_parser("train", help="meta-train on a simulated fleet and register the meta-policy")
    train.add_argument("config", nargs="?", help="YAML config (optional with --resume: the run's own config)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set learner.inner_lr=0.05 (repeatable)")
    train.add_argument("--resume", metavar="RUN_ID", help="continue an MLflow run from its last checkpoint (only one "
                                                          "matching the sha256 the run recorded for it)")
    train.add_argument("--allow-plugin", dest="allow_plugins", action="append", default=[], metavar="MODULE:OBJECT",
                       help="with --resume and no CONFIG: import this plugin family or curriculum named in the run's "
                            "stored config (repeatable); without it a stored plugin is refused, never imported")

    train.set_defaults(handler=cmd_train)

    ev = sub.add_parser("eval", help="meta-evaluate a policy on held-out tasks")
    ev.add_argument("model_uri", help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/policy or a directory")
    ev.add_argument("--split", default="test", choices=["train", "test"], help="task split (default: test)")
    ev.add_argument("--steps", default="0,1,2,3", help="adaptation steps to report, e.g. 0,1,2,3")
    ev.add_argument("--episodes", type=int, default=10, help="episodes per task and step")
    ev.add_argument("--tasks", type=int, default=10, help="number of tasks of the split")
    ev.add_argument("--backend", default="ray", choices=["ray", "local"], help="worker pool")
    ev.add_argument("--workers", type=int, default=2, help="rollout workers")
    ev.add_argument("--seed", type=int, default=0, help="evaluation seed")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_plugin_args(ev)  # a manifest's plugin family is imported only if the user names it
    # it resolves and downloads from the registry as pull does: the same bounded waits and clean exit 2
    ev.set_defaults(handler=registry_command(cmd_eval))

    tasks = sub.add_parser("tasks", help="list task families and robots")
    tasks.add_argument("--json", action="store_true", help="print JSON")
    tasks.set_defaults(handler=cmd_tasks)


def cmd_train(args) -> int:
    from deploy.jobs import config_of_run, run_training
    from deploy.manifest_config import UntrustedPlugin
    from learner.checkpoint import CheckpointIntegrityError
    from learner.config import ConfigError, load_config
    from learner.interface import LearnerFailure
    from learner.stopping import Stopped
    from learner.tracking import TrackingError, check_tracking_uri, resolve_tracking_uri
    from workers.pool import WorkerFailure
    from workers.ray_connect import RayConnectError, init_ray
    from workers.worker import EnvFailure

    if args.allow_plugins and not (args.resume and not args.config):
        return bad_input("--allow-plugin goes with --resume RUN_ID and no CONFIG (it allows a plugin of the run's "
                         "stored config; the plugins of your own CONFIG need no permission)")
    try:
        if args.resume:
            if args.config:
                cfg = load_config(args.config, args.overrides)
            else:
                cfg = config_of_run(args.resume, args.overrides, allow_plugins=tuple(args.allow_plugins))
        elif not args.config:
            return bad_input("train needs a CONFIG file (or --resume RUN_ID)")
        else:
            cfg = load_config(args.config, args.overrides)
        check_tracking_uri(resolve_tracking_uri(cfg.tracking.tracking_uri))
    except (ConfigError, TrackingError, UntrustedPlugin) as exc:
        return bad_input(str(exc))
    except OSError as exc:  # an unreadable config path, or a file named by --set that cannot be read
        return bad_input(f"cannot read the config: {exc}")
    if "runtime_resources" in os.getcwd() and "MLFLOW_TRACKING_URI" not in os.environ and not cfg.tracking.tracking_uri:
        print("fleet: warning: running as a Ray job with the default sqlite:///mlflow.db inside the job's temporary "
              "working dir; results are deleted with it. Pass MLFLOW_TRACKING_URI in --runtime-env-json.",
              file=sys.stderr, flush=True)
    print(f"metafleet: training {cfg.name!r}: {cfg.learner.algorithm} on {family_text(cfg)}/{fleet_text(cfg)}, "
          f"{cfg.train.iterations} iterations x {cfg.train.meta_batch_size} tasks, {cfg.workers.backend} "
          f"workers={cfg.workers.num_workers}", flush=True)
    try:
        if cfg.workers.backend == "ray":
            init_ray()  # join RAY_ADDRESS before the MLflow run opens: a cluster that does not answer is bad input
        job = run_training(cfg, args.resume)
    except (RayConnectError, CheckpointIntegrityError) as exc:  # a refused checkpoint: the run is left as it was
        return bad_input(str(exc))
    except Stopped as stop:
        print(f"fleet: {signal.Signals(stop.signum).name}: {stop}; checkpoint of iteration {stop.iteration} saved, "
              f"MLflow run {stop.run_id} marked KILLED. Continue with:\n  fleet train --resume {stop.run_id}",
              file=sys.stderr, flush=True)
        return stop.exit_code
    except (EnvFailure, LearnerFailure, WorkerFailure) as exc:
        cause = getattr(exc, "cause", None)  # the Ray pool wraps what a worker raised
        message = str(cause) if isinstance(cause, EnvFailure) else str(exc)
        return error(f"training failed (MLflow run marked FAILED): {message}", EXIT_FAILED)
    print(summary_text(job), flush=True)
    return EXIT_OK


def family_text(cfg) -> str:
    family = cfg.fleet.family
    return family if isinstance(family, str) else "+".join(f"{k}:{v:g}" for k, v in family.items())


def fleet_text(cfg) -> str:
    import fleet
    from fleet.tasks import family_weights
    from learner.builder import fleet_of

    robots, family = fleet_of(cfg), next(iter(family_weights(cfg.fleet.family)))
    models = sorted({fleet.robot_label(family, r) for r in [*robots.train, *robots.test]})
    return ",".join(models) + (f" ({len(robots.train)} robots)" if len(robots.train) > 1 else "")


def summary_text(job) -> str:
    result = job.train
    summary = result.final_eval.summary()
    from learner.evaluation import comparison_table

    lines = [f"\nheld-out tasks after meta-training ({len(result.final_eval.task_ids)} tasks, mean ± stderr; round k = "
             f"after k adaptation steps or context episodes):",
             comparison_table(result.learner.algorithm, result.final_eval, result.baselines)]
    if 0 in summary and 1 in summary:
        pre, post = summary[0], summary[1]
        lines.append(f"return before adaptation {pre['return_mean']:.2f} ± {pre['return_stderr']:.2f} -> after 1 step "
                     f"{post['return_mean']:.2f} ± {post['return_stderr']:.2f} "
                     f"(gain {post['return_mean'] - pre['return_mean']:+.2f})")
    lines.append(f"env steps {result.env_steps}, learner wall {result.wall_seconds:.0f}s, MLflow run {result.run_id}")
    if job.model_version is None:
        lines.append("nothing registered: single_task is a baseline of one network per training task "
                     "(its per-task returns are in the run's eval/tasks.json)")
    else:
        lines.append(f"registered models:/{job.model_name}/{job.model_version} (alias @candidate)")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from deploy.jobs import evaluate_model
    from deploy.registry import RegistryError
    from learner.config import ConfigError
    from policy.artifact import ArtifactError
    from workers.ray_connect import RayConnectError

    try:
        steps = tuple(int(s) for s in args.steps.split(","))
        if any(s < 0 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError
    except ValueError:
        return bad_input(f"--steps {args.steps!r}: expected increasing non-negative integers, e.g. 0,1,2,3")
    if args.episodes < 1 or args.tasks < 1 or args.workers < 1:
        return bad_input("--episodes, --tasks and --workers must be >= 1")
    try:
        result = evaluate_model(args.model_uri, args.split, steps, args.episodes, args.tasks,
                                args.backend, args.workers, args.seed, tuple(args.allow_plugins), args.plugin_config)
    except (RegistryError, ArtifactError, ConfigError, RayConnectError) as exc:
        return bad_input(explain(exc))  # a lookup the server failed names the server, not MLflow's text
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{args.model_uri} on {len(result.task_ids)} {args.split} tasks (mean ± stderr over tasks):")
        print(result.table())
    return EXIT_OK


def cmd_tasks(args) -> int:
    """List the task families (description, task parameters, robot kinds) and robot models."""
    from fleet.robots import ROBOT_MODELS
    from fleet.tasks import FAMILIES

    families = {name: {"description": f.description, "params": list(f.param_names),
                       "robot_kinds": list(getattr(f, "robot_kinds", None) or ["any"])}
                for name, f in FAMILIES.items()}
    robots = {name: {"kind": m.kind, "model_file": m.urdf, "loader": m.loader, "joints": m.num_joints,
                     "description": m.description} for name, m in ROBOT_MODELS.items()}
    if args.json:
        print(json.dumps({"families": families, "robots": robots}, indent=2))
        return EXIT_OK
    print("task families (plugins: name one as module:object in fleet.family, see README):")
    for name, info in families.items():
        print(f"  {name:<12} {info['description']}")
        print(f"  {'':<12} task parameters: {', '.join(info['params'])}; robots: {', '.join(info['robot_kinds'])}")
    print("robots:")
    for name, info in robots.items():
        print(f"  {name:<12} {info['kind']:<10} {info['description']}  ({info['model_file']})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
