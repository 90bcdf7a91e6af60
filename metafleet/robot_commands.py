"""`fleet run` and `fleet serve-robot`: a policy directory on a robot, and a robot on the network."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

from deploy.connect import TOKEN_ENV, read_token
from deploy.telemetry_spool import DIR_ENV
from metafleet.args import EXIT_FAILED, EXIT_OK, BadInput, error, parse_task

GIF_FRAME_MS = 40  # 25 fps: GIF delays are centiseconds and viewers slow anything under 20 ms
MP4_FPS = 60  # the sim's control rate (240 Hz physics / 4 substeps): real time


def add_parsers(sub) -> None:
    """Add the ``run`` and ``serve-robot`` subcommands to an argparse subparsers object."""
    run = sub.add_parser("run", help="run a policy directory on a robot behind the safety layer")
    run.add_argument("policy_dir", metavar="DIR", help="policy artifact directory (weights.safetensors + manifest)")
    run.add_argument("--robot", required=True, metavar="ROBOT",
                     help="sim:<robot-id>[?horizon=50&motor_strength=0.8], sim:<robot-id>?fleet_file=PATH (that "
                          f"robot of a fleet spec file) or tcp://HOST:PORT (token from ${TOKEN_ENV} or --token-file)")
    run.add_argument("--episodes", type=int, default=1, metavar="N", help="episodes to run (default 1)")
    run.add_argument("--seed", type=int, default=0, help="episode i resets with seed SEED+i (default 0)")
    run.add_argument("--task", action="append", default=[], metavar="KEY=VALUE",
                     help="task parameter, value parsed as YAML, e.g. --task goal=[0.6,0.1,0.4] (repeatable)")
    run.add_argument("--max-action-rate", default="0.5", metavar="X",
                     help="largest change of an action entry per step, in action units; 'none' turns it off")
    run.add_argument("--stochastic", action="store_true", help="sample actions instead of the policy's mean")
    run.add_argument("--trial-episodes", type=int, metavar="N",
                     help="recurrent policies: episodes that share one hidden state before it is reset (default: "
                          "the manifest's learner.trial_episodes; the state carries across all episodes without it)")
    run.add_argument("--adapt", action="store_true",
                     help="PEARL, belief and RMA policies: collect --episodes context episodes, infer the task or "
                          "robot on it (PEARL: the posterior over z; belief: the particle belief, one trial; RMA: "
                          "the mean latent estimate), then run --eval-episodes with it (and, before, unadapted)")
    run.add_argument("--eval-episodes", type=int, metavar="M",
                     help="with --adapt: episodes before and after adaptation (default: --episodes)")
    run.add_argument("--video", metavar="PATH", help="write frames of a sim: robot to PATH (.gif, or .mp4 with "
                                                     "imageio-ffmpeg)")
    run.add_argument("--token-file", metavar="FILE", help=f"token for tcp:// robots (default: ${TOKEN_ENV})")
    run.add_argument("--allow-plugin", dest="allow_plugins", action="append", default=[], metavar="MODULE:OBJECT",
                     help="sim: robots: import the policy's plugin task family MODULE:OBJECT (must match its "
                          "manifest); without it (or ?family= in --robot) a policy's plugin is refused, never "
                          "imported")
    run.add_argument("--robot-id", metavar="ID",
                     help="the robot's id in telemetry (default: the sim: robot id, or HOST:PORT of a tcp:// robot)")
    run.add_argument("--telemetry-dir", metavar="DIR",
                     help=f"spool for the per-episode telemetry (default: ${DIR_ENV}, else ~/.metafleet/telemetry); "
                          "delivered to MLflow (experiment 'fleet') when MLFLOW_TRACKING_URI is set and answers")
    run.add_argument("--no-telemetry", action="store_true", help="record no telemetry")
    run.add_argument("--json", action="store_true", help="print JSON instead of text")
    run.set_defaults(handler=cmd_run)

    serve = sub.add_parser("serve-robot", help="serve a robot over TCP for `fleet run --robot tcp://...`")
    serve.add_argument("robot", metavar="ROBOT", help="the robot to serve, e.g. sim:kuka-0?horizon=50")
    serve.add_argument("--port", type=int, default=0, metavar="P", help="TCP port (0: a free one, printed)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default 127.0.0.1; the protocol is not encrypted)")
    serve.add_argument("--token-file", metavar="FILE", help=f"shared token (default: ${TOKEN_ENV}; required)")
    serve.set_defaults(handler=cmd_serve_robot)


# -------------------------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    """``fleet run DIR --robot ROBOT``: episodes of the policy on the robot; per-episode and mean results."""
    from deploy.runtime import RobotRuntime
    from deploy.safety import SafetyConfig
    from policy.artifact import ArtifactError

    try:
        rate, task = _parse_rate(args.max_action_rate), parse_task(args.task)
        if args.episodes < 1:
            raise BadInput(f"--episodes must be >= 1, got {args.episodes}")
        _check_video(args.video, args.robot)
        for flag, value in (("--trial-episodes", args.trial_episodes), ("--eval-episodes", args.eval_episodes)):
            if value is not None and value < 1:
                raise BadInput(f"{flag} must be >= 1, got {value}")
        if args.eval_episodes is not None and not args.adapt:
            raise BadInput("--eval-episodes goes with --adapt (the episodes before and after adaptation)")
        runtime = RobotRuntime(args.policy_dir, SafetyConfig(max_action_rate=rate), deterministic=not args.stochastic,
                               trial_episodes=args.trial_episodes)
    except BadInput as exc:
        return error(str(exc))
    except (ArtifactError, OSError) as exc:
        return error(f"cannot load policy {args.policy_dir!r}: {exc}")
    try:
        _check_kind(args, runtime)
        runtime.set_task(task)
    except ValueError as exc:  # an unknown family, a mixture without one, a conditioned policy without its task
        return error(str(exc))
    try:
        robot = _connect(args, runtime, task)
    except BadInput as exc:
        return error(str(exc))
    args.telemetry = _telemetry(args, runtime)
    try:
        run = _run_adapted if args.adapt else _run_episodes
        results, frames = run(args, runtime, robot, task)
    except (ValueError, RuntimeError, OSError) as exc:  # schema errors, robot errors, lost connections
        return error(f"run on {args.robot} failed: {exc}", EXIT_FAILED)
    finally:
        robot.close()
        if args.telemetry is not None:
            args.telemetry.flush()
    _report(args, runtime, results)
    if args.video:
        try:
            _write_video(args.video, frames)
        except OSError as exc:  # the path went away or filled up while the episodes ran
            return error(f"cannot write --video {args.video!r}: {exc}")
        if not args.json:
            print(f"video: {args.video} ({len(frames)} frames)")
    return EXIT_OK


def _connect(args, runtime, task):
    from deploy.connect import connect_robot
    from deploy.wire import RobotAuthError

    address = args.robot
    if args.robot.startswith("tcp://"):
        kw = {"token": _token(args.token_file, required=False) or None}
    else:
        _check_family(args, runtime.family)  # the one family chosen (--task family=NAME, or the manifest's default)
        address = _sim_address(args, runtime.manifest)
        kw = {"family": runtime.family, "horizon": runtime.horizon or 50, "task": runtime.task,
              "render": bool(args.video)}
    try:
        robot = connect_robot(address, **kw)
    except RobotAuthError as exc:
        raise BadInput(f"robot {args.robot} refused the connection: {exc}") from None
    except (ValueError, OSError) as exc:
        raise BadInput(f"cannot open robot {args.robot!r}: {exc}") from None
    try:
        runtime.check_robot(robot)
    except ValueError as exc:
        robot.close()
        raise BadInput(f"robot {args.robot} does not fit policy {args.policy_dir!r}: {exc}") from None
    return robot


def _check_family(args, family) -> None:
    """A plugin family is imported only if the operator names it: in the address or with ``--allow-plugin``
    (which must match the policy's family: a typo must not pass silently)."""
    stray = [name for name in args.allow_plugins if name != family]
    if stray:
        raise BadInput(f"--allow-plugin {stray[0]!r} is not the task family of policy {args.policy_dir!r} "
                       f"({family!r}); allow exactly the policy's plugin family")
    if _names_plugin(family) and not _address_sets_family(args.robot) and family not in args.allow_plugins:
        raise BadInput(f"policy {args.policy_dir!r} names plugin task family {family!r}: `fleet run` never "
                       "imports code named by a policy; name the family yourself in the address, e.g. "
                       f"--robot '{args.robot}?family=MODULE:OBJECT', or pass --allow-plugin {family}")


def _sim_address(args, manifest: dict) -> str:
    """The operator's ``sim:`` address with the manifest's robot model as the default model: a parsed field,
    re-encoded (:func:`deploy.connect.with_sim_defaults`), and only a known robot model."""
    from deploy.connect import with_sim_defaults

    robot = manifest.get("robot")
    model = robot.get("model") if isinstance(robot, dict) else None
    try:
        return with_sim_defaults(args.robot, model=model)
    except ValueError as exc:
        raise BadInput(f"policy {args.policy_dir!r}: its manifest's robot.model: {exc} (a manifest names a robot "
                       "model, nothing else; or set model= in --robot yourself)") from None


def _names_plugin(family) -> bool:
    """A ``module:object`` reference (or a mixture holding one), or anything that is not a plain name."""
    names = list(family) if isinstance(family, dict) else [family]
    return any(not isinstance(name, str) or ":" in name for name in names)


def _address_sets_family(address: str) -> bool:
    from urllib.parse import parse_qsl

    query = address.partition("?")[2]
    return address.startswith("sim:") and "family" in dict(parse_qsl(query, keep_blank_values=True))


def _check_kind(args, runtime) -> None:
    """Flags that fit only some policy kinds, refused with what the policy is."""
    driver, what = runtime.driver, f"policy {args.policy_dir!r} ({runtime.manifest.get('algorithm', '?')}, " \
                                    f"kind {runtime.driver.spec.kind!r})"
    if args.adapt and not runtime.adapts_in_context:
        raise BadInput(f"--adapt infers a task latent on the robot: it needs a PEARL (context), belief or RMA policy; "
                       f"{what} is not one (gradient-step adaptation: `fleet adapt`)")
    if args.trial_episodes is not None and not driver.recurrent:
        raise BadInput(f"--trial-episodes applies to recurrent policies; {what} keeps no state across steps")


def _episode_line(label: str, result: dict) -> str:
    return (f"{label}: return {result['return']:8.3f}  success {'yes' if result['success'] else 'no ':<3}  "
            f"steps {result['steps']}  safe stops {result['safe_stops']}  clipped {result['clipped']}  "
            f"rate-limited {result['rate_limited']}")


def _run_episodes(args, runtime, robot, task, first_seed: int | None = None, count: int | None = None,
                  phase: str | None = None, frames: list | None = None) -> tuple[list[dict], list]:
    frames = [] if frames is None else frames
    on_frame = frames.append if args.video else None
    first_seed, count = (args.seed if first_seed is None else first_seed), (count or args.episodes)
    results = []
    for i in range(count):
        result = runtime.run_episode(robot, task=task, seed=first_seed + i, on_frame=on_frame)
        _record(args, runtime, result)
        results.append({"episode": i, "seed": first_seed + i, **({"phase": phase} if phase else {}), **result})
        if not args.json:
            label = f"{phase + ' ' if phase else ''}episode {i + 1}/{count}"
            print(_episode_line(label, result) + (f"  trial episode {result['trial_episode']}"
                                                  if runtime.driver.recurrent else ""), flush=True)
    return results, frames


def _telemetry(args, runtime):
    """The episode reporter of this run (spool + MLflow delivery when a tracking URI is set), or None."""
    if args.no_telemetry:
        return None
    from deploy.telemetry_spool import Spool

    try:
        spool = Spool(args.telemetry_dir)
    except OSError as exc:
        print(f"fleet: warning: telemetry off: cannot create the spool: {exc}", file=sys.stderr)
        return None
    args.identity = _identity(args, runtime)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        from deploy.telemetry import Reporter

        return Reporter(spool, os.environ["MLFLOW_TRACKING_URI"], warn=_warn)
    return _SpoolOnly(spool)


class _SpoolOnly:
    """No tracking URI: the episodes wait in the spool (`fleet run` with MLFLOW_TRACKING_URI set delivers them)."""

    def __init__(self, spool):
        self.spool, self.warned = spool, False

    def record(self, record: dict) -> None:
        try:
            if self.spool.append(record) is None and not self.warned:
                self.warned = True
                _warn("telemetry: an episode record failed validation and was skipped")
        except OSError as exc:
            if not self.warned:
                self.warned = True
                _warn(f"telemetry: cannot write the spool {self.spool.path}: {exc}")

    def flush(self) -> None:
        pass

    def summary(self) -> dict:
        pending = self.spool.pending()
        return {"spool": str(self.spool.directory), "delivered": 0, "pending": len(pending.entries),
                "skipped_lines": pending.skipped, "rejected": self.spool.rejected}


def _warn(text: str) -> None:
    print(f"fleet: warning: {text}", file=sys.stderr, flush=True)


def _identity(args, runtime) -> dict:
    """Robot id, model name, version and content digest of this run (the pull record's, where `fleet pull` made
    the directory)."""
    from urllib.parse import urlsplit

    try:
        pulled = json.loads((Path(args.policy_dir) / "pull.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pulled = {}
    pulled = pulled if isinstance(pulled, dict) else {}
    if args.robot_id:
        robot = args.robot_id
    elif args.robot.startswith("tcp://"):
        parts = urlsplit(args.robot)
        robot = f"{parts.hostname}:{parts.port}"
    else:
        robot = args.robot[len("sim:"):].partition("?")[0]
    return {"robot": robot, "model": str(pulled.get("name") or runtime.manifest.get("name")
                                         or Path(args.policy_dir).resolve().name),
            "version": str(pulled.get("version") or runtime.policy.version),
            "digest": str(runtime.manifest.get("content_sha256") or "unknown"),
            "family": runtime.family if isinstance(runtime.family, str) else None}


def _record(args, runtime, result: dict) -> None:
    """One episode to the telemetry spool; whatever goes wrong, the robot loop goes on."""
    import time

    from deploy.telemetry_spool import percentile

    reporter = getattr(args, "telemetry", None)
    if reporter is None:
        return
    try:
        latencies = runtime.last_latencies_ms
        record = {**args.identity, "time": time.time(), "return": result["return"], "length": result["steps"],
                  "success": result["success"] if runtime.last_success_defined else None,
                  "safe_stops": result["safe_stops"], "clipped": result["clipped"],
                  "rate_limited": result["rate_limited"], "latency_p50_ms": percentile(latencies, 50),
                  "latency_p99_ms": percentile(latencies, 99)}
    except (KeyError, TypeError, AttributeError) as exc:
        _warn(f"telemetry: cannot build the episode record: {exc!r}")
        return
    reporter.record(record)


def _run_adapted(args, runtime, robot, task) -> tuple[list[dict], list]:
    """On-robot adaptation: before (PEARL: z from the prior; belief: a fresh belief each episode), --episodes
    context episodes (PEARL: then the posterior; belief: one trial, the belief updated every step), after (the
    posterior z / every episode from the belief the context left), on the same seeds as before."""
    evals, first = args.eval_episodes or args.episodes, args.seed + args.episodes  # same seeds before and after
    runtime.use_prior(args.seed)
    before, frames = _run_episodes(args, runtime, robot, task, first, evals, "before")
    adapted = runtime.adapt(robot, args.episodes, task, args.seed)
    if not args.json:
        for i, result in enumerate(adapted["episodes"]):
            print(_episode_line(f"context episode {i + 1}/{args.episodes}", result), flush=True)
    after, frames = _run_episodes(args, runtime, robot, task, first, evals, "after", frames)
    belief = runtime.driver.belief or runtime.driver.estimates_latent  # inferred at every step inside the policy
    keys = ("mu", "std", "z", "transitions", "collect_s", "infer_s", "adapt_s", "policy_steps", "policy_ms_per_step") \
        if belief else ("mu", "var", "z", "transitions", "collect_s", "infer_s", "adapt_s")
    summary = {k: adapted[k] for k in keys}
    summary |= {"context_episodes": [{"episode": i, "seed": args.seed + i, **r}
                                     for i, r in enumerate(adapted["episodes"])],
                "return_before": _mean(before, "return"), "return_after": _mean(after, "return"),
                "success_before": _mean(before, "success"), "success_after": _mean(after, "success"),
                "before": before}
    if belief:  # inference runs inside the policy at every step: its time over all before/context/after steps
        summary["policy_ms_per_step_all"] = 1e3 * runtime.driver.policy_s / max(runtime.driver.policy_steps, 1)
    args.adaptation = summary
    if not args.json:
        gain = summary["return_after"] - summary["return_before"]
        if belief:
            what, before_from, after_from = ("z estimated", "z from each episode's own history", "z fixed to the mean "
                                             "estimate") if runtime.driver.estimates_latent else \
                ("belief updated", "fresh belief", "the belief the context left")
            print(f"adaptation: {args.episodes} context episode(s), {adapted['transitions']} steps, {what} "
                  f"every step: collect {adapted['collect_s']:.3f} s, of which policy (inference + action) "
                  f"{adapted['infer_s'] * 1e3:.1f} ms = {adapted['policy_ms_per_step']:.3f} ms/step")
            print(f"return before ({before_from}) {summary['return_before']:.3f}, success "
                  f"{summary['success_before']:.2f} -> after ({after_from}) "
                  f"{summary['return_after']:.3f}, success {summary['success_after']:.2f} (gain {gain:+.3f})")
            return after, frames
        print(f"adaptation: {args.episodes} context episode(s), {adapted['transitions']} transitions: collect "
              f"{adapted['collect_s']:.3f} s + infer {adapted['infer_s'] * 1e3:.2f} ms = {adapted['adapt_s']:.3f} s")
        print(f"return before (z from the prior) {summary['return_before']:.3f}, success "
              f"{summary['success_before']:.2f} -> after (z from the posterior) {summary['return_after']:.3f}, "
              f"success {summary['success_after']:.2f} (gain {gain:+.3f})")
    return after, frames


def _mean(results: list[dict], key: str) -> float:
    return sum(float(r[key]) for r in results) / len(results)


def _report(args, runtime, results: list[dict]) -> None:
    mean_return = sum(r["return"] for r in results) / len(results)
    success_rate = sum(r["success"] for r in results) / len(results)
    if args.json:
        out = {"policy_dir": str(args.policy_dir), "policy_version": runtime.policy.version,
               "policy_kind": runtime.driver.spec.kind, "conditioning": runtime.driver.spec.conditioning,
               "family": runtime.family, "robot": args.robot, "episodes": results, "mean_return": mean_return,
               "success_rate": success_rate, "safety": dict(runtime.safety.counters)}
        if runtime.driver.conditioned:
            out["task_vector"] = runtime.driver.context.tolist()
            out["task_held_out"] = runtime.driver.task_held_out
            out["task_vector_from"] = "fixed" if runtime.driver.fixed_vector is not None else "task"
        if runtime.driver.belief:
            out["belief"] = runtime.driver.belief_summary()
        if runtime.driver.belief or runtime.driver.estimates_latent:  # inference inside the policy, every step
            out["policy_ms_per_step"] = 1e3 * runtime.driver.policy_s / max(runtime.driver.policy_steps, 1)
        if runtime.driver.estimates_latent:  # RMA: z from each episode's history, or fixed by --adapt
            out["z_from"] = "history" if runtime.driver.fixed_latent is None else "adapted"
        if runtime.driver.recurrent:
            out["trial_episodes"] = runtime.trial_episodes
        if runtime.driver.latent:
            out["z"] = runtime.driver.context.tolist()
            out["z_from"] = "posterior" if runtime.driver.posterior is not None else "prior"
        if getattr(args, "adaptation", None) is not None:
            out["adaptation"] = args.adaptation
        if getattr(args, "telemetry", None) is not None:
            out["telemetry"] = args.telemetry.summary()
        print(json.dumps(out, indent=2))
    else:
        print(f"mean return {mean_return:.3f} over {len(results)} episode(s), success rate {success_rate:.2f}")


def _parse_rate(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate) or rate <= 0:
        raise BadInput(f"--max-action-rate must be a number > 0 or 'none', got {text!r}")
    return rate


def _check_video(path: str | None, robot: str) -> None:
    if path is None:
        return
    if not robot.startswith("sim:"):
        raise BadInput(f"--video needs a sim: robot (frames come from the simulator), got {robot!r}")
    suffix = Path(path).suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise BadInput(f"--video {path!r}: expected a .gif or .mp4 path")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise BadInput(f"--video {path!r}: writing MP4 needs the imageio-ffmpeg package, which is not installed; "
                       "use a .gif path instead")
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise BadInput(f"--video {path!r}: directory {str(parent)!r} does not exist")
    if Path(path).is_dir():
        raise BadInput(f"--video {path!r} is a directory; expected a file path")
    if not os.access(parent, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"--video {path!r}: not writable (check the permissions of {str(parent)!r})")


def _write_video(path: str, frames: list) -> None:
    import imageio.v2 as imageio

    if Path(path).suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=GIF_FRAME_MS, loop=0)
    else:
        imageio.mimsave(path, frames, fps=MP4_FPS)


# ---------------------------------------------------------------------------------------- serve-robot
def cmd_serve_robot(args) -> int:
    """``fleet serve-robot ROBOT``: serve a robot over TCP until SIGINT/SIGTERM."""
    from deploy.bridge_server import RobotServer
    from deploy.connect import connect_robot

    try:
        token = _token(args.token_file)
        if not args.robot.startswith("sim:"):
            raise BadInput(f"serve-robot serves a local robot: expected sim:<robot-id>, got {args.robot!r} "
                           "(for a real robot, wrap its driver in RobotServer; see docs/robots.md)")
        if not 0 <= args.port <= 65535:
            raise BadInput(f"--port must be in 0..65535, got {args.port}")
        robot = connect_robot(args.robot)
    except BadInput as exc:
        return error(str(exc))
    except ValueError as exc:
        return error(f"cannot open robot {args.robot!r}: {exc}")
    try:
        server = RobotServer(robot, token, host=args.host, port=args.port)
    except OSError as exc:
        robot.close()
        return error(f"cannot listen on {args.host}:{args.port}: {exc}")
    return _serve_until_signal(server, robot, args)


def _serve_until_signal(server, robot, args) -> int:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        host, port = server.address
        if host not in ("127.0.0.1", "::1", "localhost"):
            print(f"fleet: warning: listening on {host}: the robot protocol is not encrypted; "
                  "use it only on a trusted network or through an SSH tunnel", file=sys.stderr, flush=True)
        print(f"serving {args.robot} on {host}:{port}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        robot.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped; {json.dumps(server.stats)}", flush=True)
    return EXIT_OK


def _token(token_file: str | None, required: bool = True) -> str:
    """`deploy.connect.read_token` with its complaint as bad input (exit 2)."""
    try:
        return read_token(token_file, required)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
