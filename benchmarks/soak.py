"""Soak: meta-training with a random Ray worker killed (SIGKILL) every minute, then an undisturbed run.

Reliability issue, item 6. Real meta-training (``Trainer.iterate()`` with MLflow tracking and
checkpoints) of the given config on a ``RayWorkerPool`` built here, so the pool's fault counters can be
read. For ``--minutes`` of wall time a killer thread picks a random actor (seeded) every ``--kill-every``
seconds and ``kill -9``s its process. Then the same config, on a fresh pool of the same size, trains
with no killer for ``--baseline-minutes``; the report compares the two.

What is counted (every ``pool.sample`` call the trainer makes goes through ``AccountingPool``):

- env steps expected: requests x episodes x horizon of every sample call (the reach envs never
  terminate early, so every mask is all ones and this is exact);
- env steps received: the sum of ``Batch.num_steps`` the trainer got; "lost" = expected - received.
  Each returned batch is also checked against its request (task, policy version, phase, episodes,
  steps); a mismatch is a "bad batch" and makes the script exit 1;
- double counted: a batch whose (iteration, phase, request index) was already delivered, or whose
  observation array is byte-identical to a batch delivered for another request (a copy of someone
  else's episodes), in batches and episodes; reported next to the pool's own ``duplicates_dropped``;
- kills, and the pool's ``restarts`` / ``replacements`` / ``reissued_requests``.

Usage::

    python benchmarks/soak.py --minutes 10 --json /tmp/soak.json     # baseline min(10, 3) minutes
    python benchmarks/soak.py --quick --json out.json                 # smoke test, ~1.5 min

Exit status 1 if any env step was lost, any batch was double counted or did not match its request.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance
from learner.builder import env_spaces
from learner.config import Config, load_config
from learner.tracking import Tracker, check_tracking_uri, resolve_tracking_uri
from learner.trainer import Trainer
from policy import PolicyWeights
from workers.batch import Batch, SampleRequest
from workers.pool import WorkerPool
from workers.ray_pool import RayWorkerPool

QUICK_OVERRIDES = ["fleet.horizon=10", "train.meta_batch_size=2", "train.episodes_per_task=2"]
QUICK = {"minutes": 40 / 60, "kill_every": 10.0, "baseline_minutes": 15 / 60}


@dataclass
class Accounting:
    """What the trainer received, against what it asked for."""

    sample_calls: int = 0
    failed_calls: int = 0  # sample() raised (e.g. WorkerFailure): all its steps are lost
    requests: int = 0
    steps_expected: int = 0
    steps_received: int = 0
    episodes_received: int = 0
    bad_batches: int = 0  # wrong task/version/phase/episode count/step count for its request
    double_counted_batches: int = 0
    double_counted_episodes: int = 0
    sample_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # first few problems, for the report


class AccountingPool(WorkerPool):
    """Wraps the pool the trainer uses: checks and counts every batch it hands back."""

    def __init__(self, pool: RayWorkerPool, trainer_iteration):
        self.pool, self.num_workers = pool, pool.num_workers
        self._iteration = trainer_iteration  # callable: the trainer's current iteration
        self.acc = Accounting()
        self.sampling = threading.Event()  # set while a sample() call runs (the killer reads it)
        self._keys: set[tuple] = set()
        self._digests: dict[bytes, tuple] = {}

    def sample(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> list[Batch]:
        acc = self.acc
        expected = sum(r.episodes * r.horizon for r in requests)
        acc.sample_calls += 1
        acc.requests += len(requests)
        acc.steps_expected += expected
        started = time.perf_counter()
        self.sampling.set()
        try:
            batches = self.pool.sample(requests, weights)
        except Exception as exc:
            acc.failed_calls += 1
            self._note(f"iteration {self._iteration()}: sample() raised {exc!r}")
            raise
        finally:
            self.sampling.clear()
            acc.sample_seconds += time.perf_counter() - started
        self._check(requests, batches)
        return batches

    def _check(self, requests: Sequence[SampleRequest], batches: list[Batch]) -> None:
        acc, it = self.acc, self._iteration()
        if len(batches) != len(requests):
            self._note(f"iteration {it}: {len(batches)} batches for {len(requests)} requests")
        for index, (request, batch) in enumerate(zip(requests, batches)):
            steps, episodes = batch.num_steps, batch.num_episodes
            acc.steps_received += steps
            acc.episodes_received += episodes
            ok = (batch.task.task_id == request.task.task_id and batch.policy_version == request.policy_version
                  and batch.phase == request.phase and episodes == request.episodes
                  and steps == request.episodes * request.horizon)
            if not ok:
                acc.bad_batches += 1
                self._note(f"iteration {it} {request.phase} request {index}: got task {batch.task.task_id} "
                           f"{batch.policy_version} {batch.phase}, {episodes} episodes, {steps} steps")
            key = (it, request.phase, index)
            digest = hashlib.blake2b(batch.obs.tobytes(), digest_size=16).digest()
            first = self._digests.setdefault(digest, key)
            if key in self._keys or first != key:
                acc.double_counted_batches += 1
                acc.double_counted_episodes += episodes
                self._note(f"{key} double counted (same episodes as {first})")
            self._keys.add(key)

    def _note(self, message: str) -> None:
        if len(self.acc.errors) < 20:
            self.acc.errors.append(message)

    def close(self) -> None:
        self.pool.close()


class Killer(threading.Thread):
    """Every `every` seconds: SIGKILL the process of a random actor of `pool` (seeded choice).

    Pids come from `ray.get(actor.ping.remote())`. A ping waits behind the call the actor is running,
    so pids are fetched ahead (at start and again after each kill) and a cached pid is used when its
    process still exists; otherwise the kill would always land between two calls.
    """

    def __init__(self, pool: RayWorkerPool, every: float, seed: int, sampling: threading.Event, seconds: float):
        super().__init__(daemon=True, name="soak-killer")
        self.seconds = seconds  # no kill at or after the end of the soak: the trainer would not see it
        self.pool, self.every, self.rng, self.sampling = pool, every, random.Random(seed), sampling
        self.stop = threading.Event()
        self.kills: list[dict] = []
        self.errors: list[str] = []
        self._pids: dict[int, int] = {}
        self.t0 = time.monotonic()

    def run(self) -> None:
        self._refresh_all()
        next_kill = self.t0 + self.every
        while next_kill < self.t0 + self.seconds and not self.stop.wait(max(0.0, next_kill - time.monotonic())):
            try:
                self._kill_one()
            except Exception as exc:  # a failed kill is reported, the soak goes on
                self.errors.append(repr(exc))
            next_kill += self.every
            self._refresh_all()

    def _kill_one(self) -> None:
        slot = self.rng.randrange(self.pool.num_workers)
        pid, cached = self._pids.pop(slot, None), True
        if pid is None or not _is_actor_process(pid):
            pid, cached = self._ping(slot, timeout=120.0), False
        at = time.monotonic() - self.t0
        mid_sample = self.sampling.is_set()
        os.kill(pid, signal.SIGKILL)
        self.kills.append({"t_s": round(at, 2), "slot": slot, "pid": pid, "pid_cached": cached,
                           "during_sample": mid_sample})
        print(f"  soak: t={at:6.1f}s kill -9 worker {slot} (pid {pid}){' mid-sample' if mid_sample else ''}",
              flush=True)

    def _refresh_all(self) -> None:
        for slot in range(self.pool.num_workers):
            if self.stop.is_set():
                return
            pid = self._pids.get(slot)
            if pid is not None and _is_actor_process(pid):
                continue
            try:
                self._pids[slot] = self._ping(slot, timeout=min(self.every, 60.0))
            except Exception:  # still restarting; fetched again at kill time
                self._pids.pop(slot, None)

    def _ping(self, slot: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                actor = self.pool.actors[slot]
                return int(ray.get(actor.ping.remote(), timeout=max(0.1, deadline - time.monotonic()))["pid"])
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError):
                if time.monotonic() > deadline or self.stop.is_set():
                    raise
                time.sleep(0.2)


def _is_actor_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"RolloutWorker" in cmdline or b"ray::" in cmdline


def run_phase(cfg: Config, seconds: float, kill_every: float | None, seed: int, label: str) -> dict:
    """Train for `seconds` of wall time (whole iterations) on a fresh RayWorkerPool; kill if `kill_every`."""
    spec, spaces = env_spaces(cfg)
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    check_tracking_uri(uri)
    tracker = Tracker(uri, cfg.tracking.experiment, run_name=f"{cfg.name}-{label}")
    ray_pool = RayWorkerPool(cfg.workers.num_workers)
    trainer: Trainer | None = None
    pool = AccountingPool(ray_pool, lambda: trainer.iteration if trainer else -1)
    trainer = Trainer(cfg, pool, tracker, spec, spaces)
    killer = Killer(ray_pool, kill_every, seed, pool.sampling, seconds) if kill_every else None
    load_start = os.getloadavg()
    iteration_seconds, learn_seconds = [], 0.0
    started = time.monotonic()
    if killer:
        killer.t0 = started
        killer.start()
    status = "ok"
    try:
        while time.monotonic() - started < seconds:
            t = time.monotonic()
            try:
                metrics = trainer.iterate()
            except Exception as exc:  # counted as lost steps; the soak goes on
                status = f"iteration failed: {exc!r}"
                print(f"  {label}: {status}", flush=True)
                continue
            iteration_seconds.append(time.monotonic() - t)
            learn_seconds += metrics["learn_seconds"]
            tracker.log_metrics(metrics, step=trainer.iteration)
            if trainer.iteration % cfg.train.checkpoint_every == 0:
                trainer.save()
        elapsed = time.monotonic() - started
    finally:
        if killer:
            killer.stop.set()
            killer.join(timeout=180)
    ray_pool.drain(timeout_s=5.0)  # results of calls still running count as duplicates
    acc = pool.acc
    result = {
        "label": label, "seconds": elapsed, "iterations": trainer.iteration, "status": status,
        "trainer_env_steps": trainer.env_steps, "env_steps_per_s": trainer.env_steps / elapsed,
        "sample_env_steps_per_s": acc.steps_received / max(acc.sample_seconds, 1e-9),
        "iteration_seconds_mean": sum(iteration_seconds) / max(len(iteration_seconds), 1),
        "iteration_seconds_max": max(iteration_seconds, default=0.0),
        "iteration_seconds": [round(t, 3) for t in iteration_seconds],
        "sample_seconds": acc.sample_seconds, "learn_seconds": learn_seconds,
        "accounting": asdict(acc), "env_steps_lost": acc.steps_expected - acc.steps_received,
        "pool": {"restarts": ray_pool.restarts, "replacements": ray_pool.replacements,
                 "reissued_requests": ray_pool.reissued_requests, "duplicates_dropped": ray_pool.duplicates_dropped},
        "kills": killer.kills if killer else [], "killer_errors": killer.errors if killer else [],
        "load_average_start": load_start, "load_average_end": os.getloadavg(), "run_id": tracker.run_id,
    }
    ray_pool.close()
    tracker.close()
    return result


def report(soak: dict, base: dict) -> str:
    ratio = soak["env_steps_per_s"] / base["env_steps_per_s"]
    sa, ba = soak["accounting"], base["accounting"]
    mid = sum(k["during_sample"] for k in soak["kills"])
    rows = [
        ("wall time (s)", f"{soak['seconds']:.0f}", f"{base['seconds']:.0f}"),
        ("iterations completed", soak["iterations"], base["iterations"]),
        ("kills (SIGKILL) / landed mid-sample", f"{len(soak['kills'])} / {mid}", "0"),
        ("pool.restarts / replacements", f"{soak['pool']['restarts']} / {soak['pool']['replacements']}",
         f"{base['pool']['restarts']} / {base['pool']['replacements']}"),
        ("pool.reissued_requests", soak["pool"]["reissued_requests"], base["pool"]["reissued_requests"]),
        ("env steps expected", f"{sa['steps_expected']:,}", f"{ba['steps_expected']:,}"),
        ("env steps received (trainer)", f"{soak['trainer_env_steps']:,}", f"{base['trainer_env_steps']:,}"),
        ("**env steps lost**", soak["env_steps_lost"], base["env_steps_lost"]),
        ("**batches double counted** (episodes)",
         f"{sa['double_counted_batches']} ({sa['double_counted_episodes']})",
         f"{ba['double_counted_batches']} ({ba['double_counted_episodes']})"),
        ("pool.duplicates_dropped", soak["pool"]["duplicates_dropped"], base["pool"]["duplicates_dropped"]),
        ("batches not matching their request", sa["bad_batches"], ba["bad_batches"]),
        ("failed sample() calls", sa["failed_calls"], ba["failed_calls"]),
        ("env-steps/s (whole loop)", f"{soak['env_steps_per_s']:,.0f}", f"{base['env_steps_per_s']:,.0f}"),
        ("env-steps/s (inside sample())", f"{soak['sample_env_steps_per_s']:,.0f}",
         f"{base['sample_env_steps_per_s']:,.0f}"),
        ("iteration time mean / max (s)", f"{soak['iteration_seconds_mean']:.2f} / {soak['iteration_seconds_max']:.2f}",
         f"{base['iteration_seconds_mean']:.2f} / {base['iteration_seconds_max']:.2f}"),
        ("load average at start / end", _load(soak), _load(base)),
    ]
    lines = ["| | soak (killer on) | baseline (no killer) |", "|---|---:|---:|"]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    lines.append(f"\nthroughput ratio soak / baseline: {ratio:.2f}")
    return "\n".join(lines)


def _load(phase: dict) -> str:
    return f"{phase['load_average_start'][0]:.2f} / {phase['load_average_end'][0]:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/reach-maml.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as `fleet train --set` (repeatable)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall time of the soak (killer on)")
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    parser.add_argument("--baseline-minutes", type=float, default=None, help="default: min(--minutes, 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the killer's choice of actor")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: horizon 10, meta-batch 2, 2 episodes; 40 s soak, a kill every 10 s, "
                        "15 s baseline")
    parser.add_argument("--json", default=None, metavar="OUT",
                        help="where to write the raw JSON (default: results/soak.json; --quick: only with --json)")
    prov = provenance.start("soak.py", argv)
    args = parser.parse_args(argv)
    json_out = args.json or (None if args.quick else provenance.default_path("soak"))
    overrides = list(args.overrides)
    if args.quick:
        overrides = QUICK_OVERRIDES + overrides
        args.minutes, args.kill_every, args.baseline_minutes = QUICK["minutes"], QUICK["kill_every"], \
            QUICK["baseline_minutes"]
    baseline_minutes = args.baseline_minutes if args.baseline_minutes is not None else min(args.minutes, 3.0)
    if "MLFLOW_TRACKING_URI" not in os.environ:  # keep benchmark runs out of the user's store
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='soak-mlflow-')}/soak.db"
    workdir = tempfile.mkdtemp(prefix="soak-ckpt-")
    cfg = load_config(args.config, ["workers.backend=ray", "train.eval_every=0",
                                    f"tracking.checkpoint_dir={workdir}", *overrides])
    if cfg.workers.backend != "ray":
        parser.error("the soak kills Ray actors: workers.backend must be ray")
    print(f"soak: {cfg.name}, {cfg.workers.num_workers} Ray workers, {args.minutes:g} min with a kill every "
          f"{args.kill_every:g} s, then {baseline_minutes:g} min undisturbed; load average {os.getloadavg()}",
          flush=True)
    soak = run_phase(cfg, args.minutes * 60, args.kill_every, args.seed, "soak")
    print(f"soak done: {soak['iterations']} iterations, {len(soak['kills'])} kills; baseline...", flush=True)
    base = run_phase(cfg, baseline_minutes * 60, None, args.seed, "baseline")
    text = report(soak, base)
    print(text)
    problems = [*soak["accounting"]["errors"], *base["accounting"]["errors"]]
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if json_out:
        data = {"config": {"config": args.config, "overrides": overrides, "minutes": args.minutes,
                           "kill_every_s": args.kill_every, "baseline_minutes": baseline_minutes, "seed": args.seed,
                           "num_workers": cfg.workers.num_workers, "tracking_uri": os.environ["MLFLOW_TRACKING_URI"]},
                "soak": soak, "baseline": base,
                "summary": {"kills": len(soak["kills"]), "env_steps_lost": soak["env_steps_lost"],
                            "double_counted_batches": soak["accounting"]["double_counted_batches"],
                            "double_counted_episodes": soak["accounting"]["double_counted_episodes"],
                            "duplicates_dropped": soak["pool"]["duplicates_dropped"],
                            "restarts": soak["pool"]["restarts"],
                            "reissued_requests": soak["pool"]["reissued_requests"],
                            "iterations": soak["iterations"],
                            "throughput_ratio": soak["env_steps_per_s"] / base["env_steps_per_s"]},
                "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__}}
        provenance.write(json_out, data, prov)
    bad = (soak["env_steps_lost"] or base["env_steps_lost"] or soak["accounting"]["double_counted_batches"]
           or base["accounting"]["double_counted_batches"] or soak["accounting"]["bad_batches"]
           or base["accounting"]["bad_batches"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
