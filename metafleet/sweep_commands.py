"""`fleet sweep`: a grid or random search over config keys and seeds as one resumable Ray Tune job, tracked in
MLflow (deploy/sweep.py does the work; this module parses, validates and reports).

    fleet sweep configs/reach.yaml --grid learner.algorithm=belief,mtppo --seeds 3 --set train.iterations=40
    fleet sweep configs/reach.yaml --sample learner.outer_lr=loguniform:1e-4,1e-2 --trials 8
    fleet sweep --resume reach-sweep-20261208-031500        # after Ctrl-C / SIGTERM / a lost node
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

from metafleet.args import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, bad_input, error

DEFAULT_STORAGE = "sweeps"


def add_parsers(sub) -> None:
    sweep = sub.add_parser("sweep", help="grid / random search over config keys and seeds, as Ray Tune trials "
                                         "(one MLflow child run each)")
    sweep.add_argument("config", nargs="?", help="YAML config every trial starts from (not with --resume)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="sweep KEY over these values (repeatable: the grid is the product)")
    sweep.add_argument("--sample", action="append", default=[], metavar="KEY=KIND:LO,HI",
                       help="draw KEY from uniform / loguniform / randint (HI exclusive) for --trials points")
    sweep.add_argument("--trials", type=int, help="points drawn for --sample (seeded by --sample-seed)")
    sweep.add_argument("--sample-seed", type=int, default=0, help="seed of the --sample draws (default 0)")
    sweep.add_argument("--seeds", type=int, default=1, help="train.seed 0..N-1 for every point (default 1)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value for every trial (repeatable)")
    sweep.add_argument("--name", help="the sweep's name (its folder under --storage and its MLflow parent run); "
                                      "default CONFIG-NAME-sweep-DATE")
    sweep.add_argument("--resume", metavar="NAME", help="resume an interrupted sweep: finished trials are kept, "
                                                        "the interrupted ones resume from their checkpoints")
    sweep.add_argument("--storage", default=DEFAULT_STORAGE,
                       help=f"folder holding sweeps' Tune state (default ./{DEFAULT_STORAGE})")
    sweep.add_argument("--register", action="store_true",
                       help="register each trial's policy (as fleet train does); default: unregistered runs")
    sweep.add_argument("--out", help="write the sweep's results JSON here too (always logged to the parent run)")
    sweep.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    from deploy.sweep import SweepError, load_state, parse_grid, parse_sample, plan_sweep
    from learner.config import ConfigError, load_config
    from learner.tracking import TrackingError, check_tracking_uri, resolve_tracking_uri

    try:
        if args.resume:
            if args.config or args.grid or args.sample or args.overrides or args.name or args.trials is not None:
                return bad_input("--resume NAME takes the sweep as it was planned: no CONFIG, --grid, --sample, "
                                 "--trials, --set or --name")
            state = load_state(args.storage, args.resume)
            plan, uri = state["plan"], state["tracking_uri"]
        else:
            if not args.config:
                return bad_input("sweep needs a CONFIG file (or --resume NAME)")
            command = "fleet sweep " + " ".join(shlex.quote(a) for a in sys.argv[2:])
            plan = plan_sweep(args.config, parse_grid(args.grid), parse_sample(args.sample), args.trials,
                              args.seeds, args.overrides, args.name, args.register, args.sample_seed, command)
            if (Path(args.storage) / plan.name).exists():
                return bad_input(f"a sweep named {plan.name!r} exists under {Path(args.storage).resolve()}; resume "
                                 f"it with --resume {plan.name} or pick another --name")
            uri = resolve_tracking_uri(load_config(data=next(iter(plan.configs.values()))).tracking.tracking_uri)
        check_tracking_uri(uri)
    except (SweepError, ConfigError, TrackingError) as exc:
        return bad_input(str(exc))
    except OSError as exc:
        return bad_input(f"cannot read the config: {exc}")
    return run(plan, uri, args)


def run(plan, uri: str, args) -> int:
    from deploy.sweep import SweepError, finish_parent, local_cpus, reopen_parent, run_sweep, table
    from workers.ray_connect import RayConnectError, init_ray

    # Tune's trials keep the sweep's working directory (relative paths in configs mean what they meant here);
    # Tune's own console tables off (the sweep prints its progress lines).
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    local = os.environ.get("RAY_ADDRESS") in (None, "", "local")
    try:
        init_ray(num_cpus=local_cpus(plan) if local else None)
    except RayConnectError as exc:
        return bad_input(str(exc))
    print(f"metafleet: sweep {plan.name!r}: {len(plan.trials)} trials ({plan.seeds} seed(s) per point) of "
          f"{plan.config_path}; Tune state in {Path(args.storage).resolve() / plan.name}", flush=True)
    try:
        if args.resume:
            from deploy.sweep import load_state

            reopen_parent(load_state(args.storage, plan.name)["parent_run_id"], uri)
        outcome = run_sweep(plan, args.storage, uri, resume=bool(args.resume))
    except SweepError as exc:  # a trial that does not fit the cluster: nothing started
        return bad_input(str(exc))
    results = outcome.results(plan)
    finish_parent(outcome, results, uri)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results), flush=True)
    print(f"MLflow: parent run {outcome.parent_run_id} ({len(outcome.records)} finished child runs); results in "
          f"its artifact sweep/results.json" + (f" and {args.out}" if args.out else ""), flush=True)
    if outcome.unfinished:
        print(f"fleet: sweep stopped with {len(outcome.unfinished)} trial(s) unfinished. Continue with:\n"
              f"  fleet sweep --resume {plan.name}" + (f" --storage {args.storage}" if args.storage != DEFAULT_STORAGE
                                                       else ""), file=sys.stderr, flush=True)
        return EXIT_TERMINATED if outcome.signum == signal.SIGTERM else EXIT_INTERRUPTED
    if outcome.failed:
        return error(f"{len(outcome.failed)} trial(s) failed: {', '.join(outcome.failed)} (their MLflow runs are "
                     "marked FAILED; the Tune log under the sweep's folder has the traceback)", EXIT_FAILED)
    return EXIT_OK
