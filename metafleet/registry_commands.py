"""`fleet adapt`, `fleet promote`, `fleet pull`: the registry side of a policy's life.

Each runs through ``metafleet.registry_errors.registry_command``: bounded registry waits, and a registry that
does not answer or refuses the credentials exits 2 with a message naming it."""

from __future__ import annotations

import json

from metafleet.args import EXIT_FAILED, EXIT_OK, bad_input, parse_task
from metafleet.registry_errors import explain, registry_command


def add_plugin_args(parser) -> None:
    """``--allow-plugin`` / ``--config``: the only ways a registered policy's plugin family gets imported."""
    parser.add_argument("--allow-plugin", dest="allow_plugins", action="append", default=[], metavar="MODULE:OBJECT",
                        help="import this plugin task family named in the policy's manifest (repeatable; must "
                             "match the manifest); without it a manifest's plugin is refused, never imported")
    parser.add_argument("--config", dest="plugin_config", metavar="FILE",
                        help="your own config YAML: the plugin families its fleet.family names are allowed")


def add_parsers(sub) -> None:
    """Add the adapt, promote, pull subcommands to an argparse subparsers object."""
    adapt = sub.add_parser("adapt", help="adapt a meta-policy on one robot and register the adapted version")
    adapt.add_argument("model_uri", help="the meta-policy, e.g. models:/reach-maml@candidate")
    adapt.add_argument("--robot", required=True, help="sim:<robot-id> or tcp://HOST:PORT")
    adapt.add_argument("--robot-id", help="registry id of the robot (default: from --robot)")
    adapt.add_argument("--task", action="append", default=[], metavar="KEY=VALUE",
                       help="task parameter, e.g. goal=[0.6,0.1,0.35] (default: first held-out task)")
    adapt.add_argument("--steps", type=int, default=1, help="adaptation (gradient) steps")
    adapt.add_argument("--seed", type=int, default=0)
    add_episode_args(adapt, "support episodes per adaptation step", cmd_adapt)

    promote = sub.add_parser("promote", help="move an alias to a version if it evaluates better (a gate)")
    promote.add_argument("model", help="registered model name; with --canary: the candidate, models:/NAME@ALIAS or "
                                       "models:/NAME/VERSION")
    promote.add_argument("--version", help="candidate version (required without --canary)")
    promote.add_argument("--canary", metavar="ROBOT[,ROBOT...]",
                         help="canary rollout: move only these robots' aliases (models:/NAME@robot-ID) to the "
                              "candidate, wait for --episodes episodes they report (`fleet run` telemetry), then "
                              "promote to --alias and every robot, or roll the canaries back")
    promote.add_argument("--gate", metavar="METRIC>=X",
                         help="with --canary: what the canaries' reported mean must meet, e.g. success>=0.8 or "
                              "return>-5 (and not be worse than the current version's on the other robots)")
    promote.add_argument("--deadline", type=float, default=600.0, metavar="S",
                         help="with --canary: seconds to wait for the canaries' episodes before rolling them back "
                              "(default 600)")
    promote.add_argument("--alias", default="production", help="alias to move (default: production)")
    promote.add_argument("--force", action="store_true", help="move the alias whatever the evaluation says")
    promote.add_argument("--tasks", type=int, default=10, help="held-out tasks")
    add_episode_args(promote, "episodes per held-out task", cmd_promote)

    pull = sub.add_parser("pull", help="download and verify a policy, then switch a directory to it atomically")
    pull.add_argument("model_uri", help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/policy")
    pull.add_argument("--out", required=True, help="policy path (a symlink managed by fleet pull)")
    pull.add_argument("--json", action="store_true", help="print JSON")
    pull.set_defaults(handler=registry_command(cmd_pull))


def add_episode_args(parser, episodes_help: str, handler) -> None:
    """What the commands that run a registered policy share: --episodes, --json, the plugin permissions."""
    parser.add_argument("--episodes", type=int, default=10, help=episodes_help)
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_plugin_args(parser)
    parser.set_defaults(handler=registry_command(handler))


def cmd_adapt(args) -> int:
    from deploy.adapt import adapt_on_robot
    from deploy.registry import RegistryError
    from learner.config import ConfigError
    from policy.artifact import ArtifactError

    if args.episodes < 1 or args.steps < 1:
        return bad_input("--episodes and --steps must be >= 1")
    try:
        task = parse_task(args.task)
        result = adapt_on_robot(args.model_uri, args.robot, task, args.episodes, args.steps, args.robot_id, args.seed,
                                allow_plugins=tuple(args.allow_plugins), plugin_config=args.plugin_config)
    except (ValueError, RegistryError, ArtifactError, ConfigError, ConnectionError) as exc:
        return bad_input(explain(exc))
    except OSError as exc:  # a user-given path (a local policy directory) that cannot be read
        return bad_input(f"adapt {args.model_uri}: {exc}")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return EXIT_OK
    print(f"adapted {result.parent} on robot {result.robot_id} ({result.episodes} episodes x {result.steps} steps)")
    print(f"  return  before {result.return_before:8.2f}   after {result.return_after:8.2f}")
    print(f"  success before {result.success_before:8.2f}   after {result.success_after:8.2f}")
    moved = f"alias @robot-{result.robot_id} -> v{result.version}" if result.alias_moved else (
        f"alias @robot-{result.robot_id} NOT moved (adaptation made it worse)")
    print(f"registered models:/{result.model}/{result.version}; {moved}")
    return EXIT_OK


def cmd_promote(args) -> int:
    if args.canary is not None or args.gate is not None:
        return cmd_canary(args)
    if args.version is None:
        return bad_input("fleet promote: --version is required (or --canary ROBOT[,ROBOT...] --gate METRIC>=X for "
                         "a canary rollout)")
    from deploy.promote import GateEvaluation, promote
    from deploy.registry import RegistryError
    from learner.config import ConfigError
    from policy.artifact import ArtifactError

    try:
        evaluation = GateEvaluation(episodes=args.episodes, num_tasks=args.tasks,
                                    allow_plugins=tuple(args.allow_plugins), plugin_config=args.plugin_config)
        decision = promote(args.model, args.version, args.alias, args.force, evaluation)
    except (RegistryError, ArtifactError, ConfigError) as exc:
        return bad_input(explain(exc))
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
    else:
        verdict = "promoted" if decision.promoted else "not promoted"
        print(f"models:/{args.model}/{args.version} {verdict} to @{args.alias}: {decision.reason}")
    return EXIT_OK


def cmd_canary(args) -> int:
    """``fleet promote models:/NAME@candidate --canary R1,R2 --gate success>=X --episodes N``: see deploy/canary.py.
    Every check (gate, robots, episodes) before the first alias moves; bad input exits 2."""
    import shlex

    from deploy.canary import CanaryPlan, Gate, check_plan, parse_model_uri
    from deploy.registry import Registry, RegistryError

    if args.canary is None or args.gate is None:
        return bad_input("a canary rollout needs both --canary ROBOT[,ROBOT...] and --gate METRIC>=X")
    if args.version is not None or args.force:
        return bad_input("--canary takes the candidate as models:/NAME@ALIAS or models:/NAME/VERSION; "
                         "--version and --force do not apply")
    try:
        gate = Gate.parse(args.gate)
        client = Registry().client
        model, candidate = parse_model_uri(client, args.model)
        plan = CanaryPlan(model, candidate, args.alias, [r.strip() for r in args.canary.split(",")], gate,
                          args.episodes, args.deadline,
                          command=shlex.join(["fleet", "promote", args.model, "--canary", args.canary, "--gate",
                                              args.gate, "--episodes", str(args.episodes), "--alias", args.alias]))
        check_plan(client, plan)
    except (ValueError, RegistryError) as exc:
        return bad_input(explain(exc))
    from deploy.canary import run_canary

    decision = run_canary(client, plan)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
    else:
        verdict = f"promoted to @{args.alias} and every robot" if decision.promoted else "canaries rolled back"
        print(f"models:/{model}/{candidate}: {verdict}: {decision.reason}")
        for m in decision.moves:
            print(f"  @{m['alias']}: v{m['from']} -> v{m['to']}")
    return EXIT_OK if decision.promoted else EXIT_FAILED


def cmd_pull(args) -> int:
    from deploy.pull import pull
    from deploy.registry import RegistryError
    from policy.artifact import ArtifactError

    try:
        result = pull(args.model_uri, args.out)
    except (RegistryError, ArtifactError) as exc:
        return bad_input(f"pull refused, {args.out} unchanged: {explain(exc)}")
    except OSError as exc:  # --out under a missing, read-only or special directory
        return bad_input(f"pull failed, {args.out} unchanged: cannot write there: {exc}")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"pulled {args.model_uri} (v{result.version}, sha256 {result.sha256[:16]}) -> {result.path}")
        if result.previous:
            print(f"previous policy kept as {result.path}.last-good")
    return EXIT_OK
