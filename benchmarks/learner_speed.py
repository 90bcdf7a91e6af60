"""Gradient steps/s of each learner's update at the main jobs' sizes, and how long the learner blocks the workers.

For each learner (``--learners``: MAML = ``configs/reach-maml.yaml``, MT-PPO = ``configs/reach-mtppo.yaml``, PEARL =
``configs/reach-pearl.yaml``, ``pearl-overlap`` = the same on 2 Ray workers with ``train.overlap``, belief = the
main job ``configs/reach.yaml`` with its task model fitted in the background (the default) and
``belief-inline`` = the same with ``learner.model_background=false``) and each device (``cpu``, plus ``cuda``
when torch sees one), the job is built as ``fleet train`` builds it (benchmarks/training_runs.py; the learner in
this process on that device) and run for one untimed warm-up iteration plus ``--iterations`` timed ones, on real
data from its own workers:

- ``learn_seconds`` of an iteration is the learner's ``update()`` (what the trainer times): the workers wait
  for new weights meanwhile. MAML's inner adaptation step between support and query runs inside collection,
  so it counts as sampling time, not here.
- gradient steps per update: ``ppo_epochs`` x task minibatches for the PPO-family learners (one outer Adam
  step each: for MAML through the adapted parameters, second order as configured), ``gradient_steps`` for
  PEARL (each a SAC + encoder step on ``tasks_per_step`` tasks). Steps/s = steps per update / learn_seconds.
- blocked fraction = sum(blocked seconds) / sum(iteration seconds), with an iteration's blocked seconds the
  trainer's own ``learner_blocked_fraction`` x its wall time (the update, less what a prefetched phase covered
  with ``train.overlap``, plus the learner's plan code between phases): the share of the loop in which the
  workers wait for the learner. The belief learner's background fit of its task model is not blocking; it
  competes with the workers for CPU instead, which shows in the iteration seconds (also reported).
- belief's steps per update: its PPO steps, plus ``model_steps`` task-model steps when they run inside
  ``update()`` (``belief-inline``); in the background they are listed apart.

A learner whose job cannot be built or run (PEARL while it is not wired into the builder and trainer) is
listed as skipped with the error, and the others still run.

Usage::

    python benchmarks/learner_speed.py                          # -> results/learner-speed.json
    python benchmarks/learner_speed.py --quick --json out.json  # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance, report
from benchmarks.training_runs import TrainingJob, gradient_steps_per_update

LEARNERS = {"maml": "configs/reach-maml.yaml", "mtppo": "configs/reach-mtppo.yaml", "pearl": "configs/reach-pearl.yaml",
            "pearl-overlap": "configs/reach-pearl.yaml", "belief": "configs/reach.yaml",
            "belief-inline": "configs/reach.yaml"}
# A learner's own overrides. pearl-overlap: PEARL on 2 Ray workers with train.overlap (the next iteration's prior
# episodes are collected during the SAC steps; the job never reaches a checkpoint or its end, where none is).
EXTRA = {"belief-inline": ("learner.model_background=false",),
         "pearl-overlap": ("workers.backend=ray", "workers.num_workers=2", "train.overlap=true",
                           "train.iterations=100000", "train.checkpoint_every=100000")}


@dataclass(frozen=True)
class Config:
    """Sizes of one run (the CLI flags)."""

    learners: tuple[str, ...] = ("maml", "mtppo", "pearl", "pearl-overlap", "belief", "belief-inline")
    iterations: int = 3
    devices: tuple[str, ...] | None = None  # None: cpu, plus cuda when torch sees one
    overrides: tuple[str, ...] = ()


QUICK = Config(iterations=1, overrides=("train.meta_batch_size=2", "train.episodes_per_task=2", "fleet.horizon=10",
                                        "workers.num_workers=1", "learner.gradient_steps=5", "learner.batch_size=16",
                                        "learner.context_size=10", "learner.tasks_per_step=2",
                                        "learner.model_steps=20"))


def devices(cfg: Config) -> list[str]:
    import torch

    return list(cfg.devices) if cfg.devices else ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def measure_one(name: str, device: str, cfg: Config) -> dict:
    """One learner on one device: per-iteration learn/sample seconds, gradient steps/s, blocked fraction."""
    overrides = [f"learner.device={device}", "learner.placement=driver", *EXTRA.get(name, ()), *cfg.overrides]
    with TrainingJob(LEARNERS[name], overrides, name) as job:
        job.iterate()  # warm-up: first CUDA kernels, allocator, actors' env construction
        its = [job.iterate() for _ in range(cfg.iterations)]
        settle = getattr(job.trainer.learner, "settle_model", None)
        if settle is not None:  # a background fit ends inside its own job, not in the next one's timings
            settle()
        steps = gradient_steps_per_update(job.cfg)
        job_cfg = job.cfg
    lc = job_cfg.learner
    beside = lc.model_steps if lc.algorithm == "belief" and lc.model_background else 0
    if lc.algorithm == "belief" and not beside:
        steps += lc.model_steps
    learn = [i.learn_seconds for i in its]
    return {"learner": name, "device": device, "config": LEARNERS[name], "overrides": list(EXTRA.get(name, ())),
            "workers": f"{job_cfg.workers.backend} x {job_cfg.workers.num_workers}",
            "meta_batch": job_cfg.train.meta_batch_size, "env_steps_per_iteration": its[0].env_steps,
            "gradient_steps_per_update": steps, "background_steps": beside, "learn_seconds": learn,
            "sample_seconds": [i.sample_seconds for i in its], "iteration_seconds": [i.seconds for i in its],
            "gradient_steps_per_s": steps / statistics.median(learn),
            "blocked_fraction": sum(i.blocked_seconds for i in its) / sum(i.seconds for i in its),
            "iterations": [i.to_dict() for i in its]}


def measure(cfg: Config) -> dict:
    import ray
    import torch

    rows, skipped = [], []
    try:
        for device in devices(cfg):
            for name in cfg.learners:
                provenance.log(f"{name} on {device}")
                try:
                    rows.append(measure_one(name, device, cfg))
                except Exception as exc:  # a learner not wired in yet must not lose the others' figures
                    provenance.log(f"skipping {name} on {device}: {exc!r}")
                    skipped.append({"learner": name, "device": device, "error": repr(exc)[:500]})
    finally:
        ray.shutdown()
    return {"config": asdict(cfg), "torch_threads": torch.get_num_threads(), "rows": rows, "skipped": skipped}


def render(data: dict) -> str:
    """The markdown table (the same as in the docs: benchmarks/report.py renders it)."""
    return "\n".join(report.render_learner_speed(data))


def parse_config(argv: Sequence[str] | None) -> tuple[Config, str | None]:
    d = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", nargs="+", choices=list(LEARNERS), default=list(d.learners))
    parser.add_argument("--iterations", type=int, default=d.iterations, help="timed iterations per learner")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda if present")
    provenance.add_job_args(parser, "learner-speed")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    base = QUICK if args.quick else d
    cfg = replace(base, learners=tuple(args.learners), devices=tuple(args.devices) if args.devices else None,
                  iterations=args.iterations if args.iterations != d.iterations else base.iterations,
                  overrides=(*base.overrides, *args.overrides))
    return cfg, args.json or (None if args.quick else str(provenance.default_path("learner-speed")))


def main(argv: Sequence[str] | None = None) -> int:
    data = provenance.run("learner_speed.py", argv, parse_config, measure, render)
    return 0 if data["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
