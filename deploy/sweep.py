"""`fleet sweep`: a grid or random search over config keys and seeds, each trial a full training run, executed as
Ray Tune trials and tracked in MLflow (one parent run per sweep, one child run per trial).

    plan = plan_sweep("configs/reach.yaml", grid={"learner.algorithm": ["belief", "mtppo"]}, seeds=3)
    outcome = run_sweep(plan, storage="sweeps")      # resumable: resume_sweep("sweeps", plan.name)

Everything is checked before a trial starts (:func:`plan_sweep`: every trial's config validates; :func:`check_fits`:
every trial's reservation fits the cluster). A trial reserves what its run uses through Tune's placement group
(:func:`trial_bundles`): one CPU for the run itself (the learner runs in it, on a GPU when the cluster has one)
plus one per Ray rollout worker, whose actors Tune schedules inside the trial's group. Concurrency follows: on a
private local Ray, whose logical CPUs are the machine's cores (at least one trial's), one trial at a time on 2
cores; on a cluster as many as its resources hold.

Resume: each trial reports its MLflow run id in a Tune checkpoint after its first iteration; a restored trial
resumes that run from its last training checkpoint (the bitwise resume of `fleet train --resume`), so an
interrupted sweep ends with the figures of an uninterrupted one. Finished trials are not re-run.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learner.config import Config, ConfigError, load_config
from learner.evaluation import stderr

SAMPLERS = ("uniform", "loguniform", "randint")
STATE_FILE = "sweep.json"  # the plan, beside Tune's experiment state: what --resume re-reads
METRIC = "heldout_success"  # the trial metric: mean held-out success at the last adaptation round


class SweepError(ValueError):
    """A sweep that cannot run; the message names the key, value or resource."""


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: a grid (or sampled) point and a seed, as config overrides."""

    key: str  # "learner.algorithm=belief seed=0": unique, stable, what the results are keyed by
    point: dict[str, str]  # the swept keys' values, as given (YAML text)
    seed: int
    overrides: tuple[str, ...]  # the sweep's --set, then the point, then train.seed


@dataclass
class SweepPlan:
    name: str
    config_path: str
    overrides: tuple[str, ...]
    grid: dict[str, list[str]]
    sample: dict[str, tuple[str, float, float]]
    seeds: int
    register: bool
    trials: list[Trial]
    configs: dict[str, dict] = field(default_factory=dict)  # trial key -> its resolved config (validated)
    command: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "config": self.config_path, "overrides": list(self.overrides), "grid": self.grid,
                "sample": {k: list(v) for k, v in self.sample.items()}, "seeds": self.seeds,
                "register": self.register, "command": self.command,
                "trials": [{"key": t.key, "point": t.point, "seed": t.seed, "overrides": list(t.overrides)}
                           for t in self.trials], "configs": self.configs}

    @classmethod
    def from_dict(cls, data: dict) -> SweepPlan:
        trials = [Trial(t["key"], dict(t["point"]), int(t["seed"]), tuple(t["overrides"])) for t in data["trials"]]
        return cls(data["name"], data["config"], tuple(data["overrides"]), dict(data["grid"]),
                   {k: (v[0], float(v[1]), float(v[2])) for k, v in data["sample"].items()}, int(data["seeds"]),
                   bool(data["register"]), trials, dict(data["configs"]), data.get("command", ""))


# ---- the plan: parsed, expanded and validated before anything starts ----------------------------------------------


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """`--grid KEY=V1,V2,...` (repeatable) -> {KEY: [V1, V2, ...]}; a value may be any YAML scalar."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid learner.algorithm=belief,maml")
        values = [v.strip() for v in raw.split(",")]
        if not raw.strip() or any(not v for v in values):
            raise SweepError(f"--grid {item!r}: {key} has an empty value; expected KEY=V1,V2,... with every value "
                             "non-empty")
        if key in grid:
            raise SweepError(f"--grid names {key} twice; give all its values in one --grid {key}=V1,V2,...")
        if len(set(values)) != len(values):
            raise SweepError(f"--grid {item!r}: {key} repeats a value")
        grid[key] = values
    return grid


def parse_sample(items: Sequence[str]) -> dict[str, tuple[str, float, float]]:
    """`--sample KEY=uniform:LO,HI` (or loguniform:LO,HI, randint:LO,HI with HI exclusive) -> {KEY: (kind, lo, hi)}."""
    out: dict[str, tuple[str, float, float]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        kind, colon, bounds = raw.partition(":")
        parts = bounds.split(",")
        key, kind = key.strip(), kind.strip()
        expected = (f"expected KEY=KIND:LO,HI with KIND one of {', '.join(SAMPLERS)}, "
                    "e.g. learner.outer_lr=loguniform:1e-4,1e-2")
        if not sep or not key or not colon or kind not in SAMPLERS or len(parts) != 2:
            raise SweepError(f"--sample {item!r}: {expected}")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise SweepError(f"--sample {item!r}: LO and HI must be numbers; {expected}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi or (kind == "loguniform" and lo <= 0):
            positive = " and LO > 0" if kind == "loguniform" else ""
            raise SweepError(f"--sample {item!r}: needs finite LO < HI{positive}")
        if kind == "randint" and (lo != int(lo) or hi != int(hi)):
            raise SweepError(f"--sample {item!r}: randint bounds must be integers")
        out[key] = (kind, lo, hi)
    return out


def draw(kind: str, lo: float, hi: float, rng: np.random.Generator) -> str:
    """One value of a --sample distribution, as the YAML text an override carries."""
    if kind == "uniform":
        return repr(float(rng.uniform(lo, hi)))
    if kind == "loguniform":
        return repr(float(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    return str(int(rng.integers(int(lo), int(hi))))


def trial_key(point: dict[str, str], seed: int) -> str:
    return " ".join([*(f"{k}={v}" for k, v in point.items()), f"seed={seed}"])


def plan_sweep(config_path: str, grid: dict[str, list[str]] | None = None,
               sample: dict[str, tuple[str, float, float]] | None = None, trials: int | None = None, seeds: int = 1,
               overrides: Sequence[str] = (), name: str | None = None, register: bool = False,
               sample_seed: int = 0, command: str = "") -> SweepPlan:
    """Expand grid x samples x seeds into trials and validate every trial's config (ConfigError names the key).

    Seeds are `train.seed` 0..seeds-1. Random search: `trials` points drawn from `sample` (seeded by
    `sample_seed`, so a sweep's points are reproducible), each crossed with the grid, if any."""
    grid, sample = dict(grid or {}), dict(sample or {})
    if seeds < 1:
        raise SweepError(f"--seeds must be >= 1 (got {seeds}): each point runs train.seed = 0 .. seeds-1")
    if not grid and not sample and seeds == 1:
        raise SweepError("an empty sweep: give --grid KEY=V1,V2,..., --sample KEY=KIND:LO,HI with --trials N, "
                         "or --seeds N > 1")
    if sample and (trials is None or trials < 1):
        raise SweepError(f"--sample needs --trials N >= 1 (the number of points drawn), got {trials}")
    if trials is not None and not sample:
        raise SweepError("--trials goes with --sample (it counts the points drawn); a grid's size is its product")
    both = set(grid) & set(sample)
    if both:
        raise SweepError(f"{sorted(both)} both in --grid and --sample; sweep a key one way")
    if "train.seed" in grid or "train.seed" in sample:
        raise SweepError("train.seed is swept by --seeds N (seeds 0..N-1), not by --grid/--sample")
    rng = np.random.default_rng(sample_seed)
    samples = [{k: draw(*spec, rng) for k, spec in sample.items()} for _ in range(trials or 1)] if sample else [{}]
    points = [{**dict(zip(grid, combo)), **drawn} for combo in itertools.product(*grid.values()) for drawn in samples]
    out, configs = [], {}
    for point in points:
        for seed in range(seeds):
            point_overrides = [f"{k}={v}" for k, v in point.items()]
            trial = Trial(trial_key(point, seed), point, seed, (*overrides, *point_overrides, f"train.seed={seed}"))
            try:
                cfg = load_config(config_path, list(trial.overrides))
            except ConfigError as exc:
                raise ConfigError(f"sweep trial {trial.key!r}: {exc}") from None
            out.append(trial)
            configs[trial.key] = cfg.to_dict()
    base = load_config(config_path, list(overrides))
    name = name or f"{base.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    check_name(name)
    return SweepPlan(name, str(config_path), tuple(overrides), grid, sample, seeds, register, out, configs, command)


def check_name(name: str) -> None:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or len(name) > 120:
        raise SweepError(f"sweep name {name!r}: expected a plain folder name (no '/', not starting with '.')")


# ---- resources ----------------------------------------------------------------------------------------------------


def trial_bundles(cfg: Config, cluster_gpus: float) -> list[dict[str, float]]:
    """What one trial reserves: the run's own process (1 CPU; +1 GPU for its learner when the cluster has GPUs
    and the learner may use one), then one CPU per Ray rollout worker (in-process workers need none)."""
    head: dict[str, float] = {"CPU": 1.0}
    if cluster_gpus >= 1 and cfg.learner.device != "cpu":
        head["GPU"] = 1.0
    workers = [{"CPU": 1.0}] * cfg.workers.num_workers if cfg.workers.backend == "ray" else []
    return [head, *workers]


def totals(bundles: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for bundle in bundles:
        for resource, amount in bundle.items():
            out[resource] = out.get(resource, 0.0) + amount
    return out


def check_fits(plan: SweepPlan, cluster: dict[str, float]) -> dict[str, list[dict[str, float]]]:
    """Each trial's bundles, after checking that every trial fits the cluster's resources (SweepError naming the
    trial, the resource, what it needs and what the cluster has)."""
    out = {}
    for trial in plan.trials:
        cfg = load_config(data=plan.configs[trial.key])
        bundles = trial_bundles(cfg, cluster.get("GPU", 0.0))
        for resource, need in totals(bundles).items():
            have = cluster.get(resource, 0.0)
            if need > have:
                raise SweepError(f"sweep trial {trial.key!r} needs {need:g} {resource} (1 for the run + "
                                 f"{cfg.workers.num_workers} Ray rollout workers = workers.num_workers) but the "
                                 f"cluster has {have:g}; lower workers.num_workers or add nodes")
        out[trial.key] = bundles
    return out


def local_cpus(plan: SweepPlan) -> int:
    """Logical CPUs of a private local Ray for this sweep: the machine's cores, at least one trial's reservation
    (the run's process shares a core with its workers, as a plain `fleet train` does)."""
    need = max(totals(trial_bundles(load_config(data=c), 0.0))["CPU"] for c in plan.configs.values())
    return max(os.cpu_count() or 1, math.ceil(need))


# ---- one trial (runs in a Tune actor) ---------------------------------------------------------------------------


def trial_config(plan: SweepPlan, trial: Trial, parent_run_id: str, tracking_uri: str, workdir: str) -> dict:
    """What the Tune trial receives: its resolved config, made to be a child of the sweep's parent run."""
    data = json.loads(json.dumps(plan.configs[trial.key]))
    data["tracking"].update(tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                            tags={"sweep": plan.name, "sweep_trial": trial.key, "sweep_seed": str(trial.seed),
                                  **{f"sweep.{k}": v for k, v in trial.point.items()}},
                            checkpoint_dir=str(Path(workdir, data["tracking"]["checkpoint_dir"]).resolve()))
    data["name"] = f"{data['name']} [{trial.key}]"  # the child run's name in the MLflow UI
    data["learner"]["placement"] = "driver"  # the trial's process is the run's driver: its bundle holds the GPU
    return {"key": trial.key, "point": trial.point, "seed": trial.seed, "config": data, "workdir": workdir,
            "register": plan.register}


def run_trial(config: dict, specs: dict[str, dict]) -> None:
    """Tune's function trainable: one full training run (the trial `config["key"]` of `specs`); reports its MLflow
    run id early (a checkpoint, for resume) and its held-out figures at the end."""
    from ray import tune

    spec = specs[config["key"]]
    for name in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" per report, forwarded to the sweep
        logging.getLogger(name).setLevel(logging.WARNING)
    from deploy.jobs import run_training
    from learner.trainer import train

    if os.path.isdir(spec["workdir"]):
        os.chdir(spec["workdir"])  # relative paths of the config (fleet files) mean what they meant to the sweep
    cfg = load_config(data=spec["config"])
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = json.loads(Path(folder, "trial.json").read_text())["run_id"]
    progress = TrialProgress(cfg.train.iterations)
    started = time.perf_counter()
    if spec["register"]:
        job = run_training(cfg, resume)
        result, version = job.train, job.model_version
    else:
        result = train(cfg, resume, progress=progress)
        result.tracker.close()
        version = None
    record = trial_record(spec, cfg, result, version, time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "trial.json").write_text(json.dumps({"run_id": result.run_id, "record": record}))
        tune.report({**record["metrics"], "done": 1, "iteration": result.iterations},
                    checkpoint=tune.Checkpoint.from_directory(folder))


class TrialProgress:
    """The trainer's progress sink inside a trial: after the first iteration, a Tune checkpoint naming the run
    (what a restored trial resumes); every iteration, a Tune report (the sweep's progress lines)."""

    def __init__(self, total: int):
        self.total, self.checkpointed = total, False

    def update(self, done: int, text: str) -> None:
        import mlflow
        from ray import tune

        metrics = {"iteration": done, "done": 0}
        run = mlflow.active_run()
        if not self.checkpointed and run is not None:
            self.checkpointed = True
            with tempfile.TemporaryDirectory() as folder:
                Path(folder, "trial.json").write_text(json.dumps({"run_id": run.info.run_id}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            return
        tune.report(metrics)

    def line(self, text: str) -> None:
        print(text, flush=True)


def figures(result) -> dict:
    return {"returns": {str(k): v for k, v in result.returns.items()},
            "successes": {str(k): v for k, v in result.successes.items()}}


def trial_record(spec: dict, cfg: Config, result, version: str | None, seconds: float) -> dict:
    """A finished trial's record for the sweep's results JSON: its point, its learner and family, its held-out
    figures per round (and the robot of each held-out task) and its yardsticks', its budget and where it lives in
    MLflow."""
    from learner.builder import held_out_robots

    final = result.final_eval
    last = str(max(final.steps))
    metrics = {METRIC: float(np.mean(final.successes[int(last)])),
               "heldout_return": float(np.mean(final.returns[int(last)])),
               "heldout_success_round0": float(np.mean(final.successes[min(final.steps)]))}
    family = cfg.fleet.family if isinstance(cfg.fleet.family, str) else "+".join(sorted(cfg.fleet.family))
    robots = [r.robot_id for r in held_out_robots(cfg, len(final.task_ids))]
    return {"key": spec["key"], "point": spec["point"], "seed": spec["seed"], "run_id": result.run_id,
            "algorithm": cfg.learner.algorithm, "family": family, "robots": robots,
            "registered_version": version, "iterations": result.iterations, "env_steps": result.env_steps,
            "steps": list(final.steps), "task_ids": list(final.task_ids), **figures(final),
            "baselines": {name: figures(r) for name, r in result.baselines.items()}, "metrics": metrics,
            "wall_seconds": round(seconds, 1), "train_seconds": round(result.wall_seconds, 1)}


# ---- the sweep's driver -------------------------------------------------------------------------------------------


class SweepProgress:
    """Plain progress lines from the Tune driver: trials done / running / pending and the best so far (a Tune
    callback; one line per change, readable piped into Ray job logs)."""

    def __init__(self, name: str, total: int, stream=None):
        self.name, self.total, self.stream = name, total, stream or sys.stdout
        self.last = ""

    def callback(self):
        from ray.tune import Callback

        progress = self

        class _Lines(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                progress.show(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                progress.show(trials, ended=trial)  # called before Tune marks it TERMINATED

            def on_trial_error(self, iteration, trials, trial, **info):
                progress.show(trials, f"trial {trial.config.get('key')!r} failed: see its MLflow run / Tune log")

        return _Lines()

    def show(self, trials, note: str = "", ended=None) -> None:
        status = ["TERMINATED" if t is ended else t.status for t in trials]
        done = status.count("TERMINATED")
        running, errored = status.count("RUNNING"), status.count("ERROR")
        best = max((t for t, s in zip(trials, status) if s == "TERMINATED" and METRIC in (t.last_result or {})),
                   key=lambda t: t.last_result[METRIC], default=None)
        best_text = f"; best {METRIC} {best.last_result[METRIC]:.2f} ({best.config['key']})" if best else ""
        line = (f"sweep {self.name}: {done}/{self.total} done, {running} running, "
                f"{self.total - done - running - errored} pending" + (f", {errored} failed" if errored else "")
                + best_text)
        if note:
            line += f"\n  {note}"
        if line != self.last:
            self.last = line
            print(line, file=self.stream, flush=True)


@dataclass
class SweepOutcome:
    name: str
    path: Path  # the Tune experiment folder (storage/name)
    parent_run_id: str
    records: list[dict]
    failed: list[str]  # keys of trials that ended in error
    unfinished: list[str] = field(default_factory=list)  # keys of trials stopped before they ended (resume them)
    signum: int = signal.SIGINT  # what stopped it, when trials are unfinished

    def results(self, plan: SweepPlan) -> dict:
        """The sweep's results JSON: the plan, every finished trial's record (sorted by key) and per grid
        point the mean ± stderr over seeds of each round's held-out success and return."""
        return {"format": "sweep", "sweep": {k: v for k, v in plan.to_dict().items() if k != "configs"},
                "parent_run_id": self.parent_run_id, "trials": self.records, "failed": self.failed,
                "unfinished": self.unfinished,
                "summary": summarize(self.records)}


def summarize(records: list[dict]) -> list[dict]:
    """Per point (the trial's swept values), over seeds: each round's held-out success and return, mean ± stderr
    of the per-seed means; each yardstick's too."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(json.dumps(r["point"], sort_keys=True), []).append(r)
    out = []
    for point, runs in groups.items():
        names = sorted({n for r in runs for n in r["baselines"]})
        out.append({"point": json.loads(point), "algorithm": runs[0].get("algorithm"),
                    "seeds": sorted(r["seed"] for r in runs),
                    "env_steps": runs[0]["env_steps"], "rounds": rounds(runs),
                    "baselines": {n: rounds([r["baselines"][n] for r in runs]) for n in names
                                  if all(n in r["baselines"] for r in runs)}})
    return out


def rounds(figures_per_seed: list[dict]) -> dict:
    """Round -> success and return, [mean, stderr] over seeds of each seed's mean over held-out tasks."""
    cells = {}
    for k in sorted({k for f in figures_per_seed for k in f["successes"]}, key=int):
        succ = [float(np.mean(f["successes"][k])) for f in figures_per_seed if k in f["successes"]]
        ret = [float(np.mean(f["returns"][k])) for f in figures_per_seed if k in f["returns"]]
        cells[k] = {"success": [float(np.mean(succ)), stderr(succ)], "return": [float(np.mean(ret)), stderr(ret)]}
    return cells


def open_parent(plan: SweepPlan, tracking_uri: str, experiment: str) -> str:
    """The sweep's parent MLflow run (the grid, the command, the commit); its id."""
    from mlflow import MlflowClient

    from deploy.registry import git_commit

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=plan.name,
                            tags={"sweep": plan.name, "kind": "sweep", "git_commit": git_commit() or "unknown",
                                  "command": plan.command[:5000]})
    client.log_dict(run.info.run_id, {k: v for k, v in plan.to_dict().items() if k != "configs"}, "sweep/plan.json")
    client.log_param(run.info.run_id, "trials", len(plan.trials))
    client.log_param(run.info.run_id, "seeds", plan.seeds)
    for key, values in plan.grid.items():
        client.log_param(run.info.run_id, f"grid.{key}", ",".join(values)[:500])
    return run.info.run_id


def run_sweep(plan: SweepPlan, storage: str | Path, tracking_uri: str, resume: bool = False,
              stream=None) -> SweepOutcome:
    """Run (or resume) the sweep as a Tune experiment under `storage`/NAME; Ray must be initialised.
    SIGTERM is handled as SIGINT (Tune then stops, saving the experiment's state for --resume)."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    # Tune's result files without its TensorBoard logger (not installed: a warning per sweep); a trial that an
    # interruption left unstarted has none, which the sweep reports itself (`unfinished`).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    storage = Path(storage).resolve()
    path = storage / plan.name
    state_file = path / STATE_FILE
    bundles = check_fits(plan, ray.cluster_resources())
    if resume:
        state = json.loads(state_file.read_text())
        parent = state["parent_run_id"]
    else:
        path.mkdir(parents=True, exist_ok=False)
        experiment = load_config(data=next(iter(plan.configs.values()))).tracking.experiment
        parent = open_parent(plan, tracking_uri, experiment)
        state_file.write_text(json.dumps({"plan": plan.to_dict(), "parent_run_id": parent,
                                          "tracking_uri": tracking_uri, "workdir": os.getcwd()}))
    workdir = json.loads(state_file.read_text())["workdir"]
    progress = SweepProgress(plan.name, len(plan.trials), stream)
    specs = {t.key: trial_config(plan, t, parent, tracking_uri, workdir) for t in plan.trials}
    trainable = tune.with_resources(tune.with_parameters(run_trial, specs=specs),
                                    resources=lambda config: tune.PlacementGroupFactory(bundles[config["key"]],
                                                                                        strategy="PACK"))
    def terminate(signum, frame):  # Tune stops gracefully on SIGINT only: a SIGTERM (a job stopped) is the same
        outcome_signal.append(signum)
        os.kill(os.getpid(), signal.SIGINT)

    outcome_signal: list[int] = []
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if resume:
            tuner = tune.Tuner.restore(str(path / "tune"), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"key": tune.grid_search([t.key for t in plan.trials])},
                tune_config=tune.TuneConfig(reuse_actors=False),
                run_config=tune.RunConfig(name="tune", storage_path=str(path), verbose=0,
                                          callbacks=[progress.callback(), JsonLoggerCallback(), CSVLoggerCallback()],
                                          failure_config=tune.FailureConfig(max_failures=0)))
        grid = tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    records, failed = [], []
    for result in grid:
        key = (result.config or {}).get("key")  # None for a trial the interruption left unstarted
        checkpoint = result.checkpoint
        stored = {}
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                stored = json.loads(Path(folder, "trial.json").read_text())
        if "record" in stored:
            records.append(stored["record"])
        elif key is not None and result.error is not None:
            failed.append(key)
    done = {r["key"] for r in records} | set(failed)
    unfinished = [t.key for t in plan.trials if t.key not in done]
    records.sort(key=lambda r: r["key"])
    return SweepOutcome(plan.name, path, parent, records, sorted(failed), sorted(unfinished),
                        signal.SIGTERM if outcome_signal else signal.SIGINT)


def load_state(storage: str | Path, name: str) -> dict:
    """A sweep's stored state (plan, parent run, tracking URI, working dir) for --resume; SweepError if absent."""
    check_name(name)
    state_file = Path(storage).resolve() / name / STATE_FILE
    if not state_file.is_file():
        root = Path(storage).resolve()
        known = sorted(p.parent.name for p in root.glob(f"*/{STATE_FILE}")) if root.is_dir() else []
        raise SweepError(f"no sweep {name!r} under {Path(storage).resolve()} (no {STATE_FILE}); sweeps there: "
                         f"{', '.join(known) or 'none'}")
    try:
        state = json.loads(state_file.read_text())
        state["plan"] = SweepPlan.from_dict(state["plan"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SweepError(f"{state_file} is not a sweep state file ({exc})") from None
    return state


def finish_parent(outcome: SweepOutcome, results: dict, tracking_uri: str) -> None:
    """The parent run gets the results JSON, the table and the best figure; FINISHED when every trial finished,
    KILLED when some were stopped (a resume sets it running again), FAILED when one failed."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = outcome.parent_run_id
    client.log_dict(run_id, results, "sweep/results.json")
    client.log_text(run_id, table(results), "sweep/table.md")
    if outcome.records:
        client.log_metric(run_id, f"best_{METRIC}", max(r["metrics"][METRIC] for r in outcome.records))
    client.log_metric(run_id, "trials_finished", len(outcome.records))
    status = "FAILED" if outcome.failed else "KILLED" if outcome.unfinished else "FINISHED"
    client.set_terminated(run_id, status)


def reopen_parent(parent_run_id: str, tracking_uri: str) -> None:
    """On --resume: the parent runs again; a child the interruption left RUNNING is marked KILLED (the trial that
    resumes it sets it running again; one stopped before its first checkpoint starts a new run)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    client.update_run(parent_run_id, status="RUNNING")
    parent = client.get_run(parent_run_id)
    for child in client.search_runs([parent.info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"):
        client.set_terminated(child.info.run_id, "KILLED")


def table(results: dict) -> str:
    """Markdown: one row per point, held-out success (mean ± stderr over seeds) per round, then the yardsticks'
    success at round 0."""
    summary = results["summary"]
    if not summary:
        return "(no finished trial)"
    rounds = sorted({k for s in summary for k in s["rounds"]}, key=int)
    names = sorted({n for s in summary for n in s["baselines"]})
    keys = list(summary[0]["point"])
    head = [*keys, "seeds", "env steps", *(f"success after {k}" for k in rounds), *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [str(s["point"].get(k, "")) for k in keys] + [str(len(s["seeds"])), f"{s['env_steps']:,}"]
        cells += [f"{s['rounds'][k]['success'][0]:.2f} ± {s['rounds'][k]['success'][1]:.2f}" if k in s["rounds"]
                  else "–" for k in rounds]
        for n in names:
            b = s["baselines"].get(n, {})
            first = b.get(min(b, key=int)) if b else None
            cells.append(f"{first['success'][0]:.2f} ± {first['success'][1]:.2f}" if first else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
