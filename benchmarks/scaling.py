"""End-to-end env steps/s (learning included) of a training job vs rollout workers, across Ray nodes, and what
losing a node costs.

Three parts, one job config (``--config``, default ``configs/reach-maml.yaml``: MAML on reach, built as
``fleet train`` builds it; benchmarks/training_runs.py), each timed per meta-iteration after one untimed
warm-up iteration:

1. **workers**: one job per worker count in ``--workers`` (default 1 2 4 8 14), all held open on one local
   Ray (127.0.0.1) and timed in interleaved rounds. Counts above this machine's usable cores are skipped
   and listed as skipped. "per worker" = rate(k) / (k x rate(1)).
2. **nodes**: a ``ray.cluster_utils.Cluster`` on 127.0.0.1, a head with no CPUs (so every worker lands on a
   worker node) plus ``--nodes`` nodes of ``--workers-per-node`` CPUs, one job with nodes x per-node workers.
3. **node loss**: in the same job, ``--iterations`` iterations, then the last node is removed while the next
   iteration samples (a timer thread, ``--kill-after`` of an iteration in), then ``--iterations`` more. The
   pool reissues the dead workers' requests to the live ones. "loss" = 1 - after / before, next to the node's
   share of the workers; losing a node should cost no more than its share. The iteration with the kill is
   reported apart, and so are the iterations after it until one needs no reissued request (Ray's failure
   detection and the reissued work).

Usage::

    python benchmarks/scaling.py                          # -> results/scaling.json
    python benchmarks/scaling.py --quick --json out.json  # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance, report
from benchmarks.training_runs import IterationFigures, TrainingJob


@dataclass(frozen=True)
class Config:
    """Sizes of one run (the CLI flags)."""

    config: str = "configs/reach-maml.yaml"
    workers: tuple[int, ...] = (1, 2, 4, 8, 14)
    rounds: int = 3
    iterations: int = 2  # per job per round; before and after the node loss
    nodes: int = 3
    workers_per_node: int = 1
    kill_after: float = 0.3  # fraction of an iteration's time into the kill iteration
    overrides: tuple[str, ...] = ()


QUICK = Config(workers=(1, 2), rounds=2, iterations=1, nodes=2,
               overrides=("train.meta_batch_size=2", "train.episodes_per_task=2", "fleet.horizon=10"))


def job(cfg: Config, workers: int) -> TrainingJob:
    overrides = ["workers.backend=ray", f"workers.num_workers={workers}", *cfg.overrides]
    return TrainingJob(cfg.config, overrides, f"{workers} worker(s)")


def rate(its: Sequence[IterationFigures]) -> dict:
    steps, seconds = sum(i.env_steps for i in its), sum(i.seconds for i in its)
    sample = sum(i.sample_seconds for i in its)
    return {"steps_per_s": steps / seconds, "sample_steps_per_s": steps / sample, "env_steps": steps,
            "seconds": seconds, "iterations": [i.to_dict() for i in its]}


# ------------------------------------------------------------------------------ 1. worker counts
def workers_sweep(cfg: Config) -> dict:
    """Every usable worker count's job, timed in interleaved rounds on one local Ray."""
    import ray

    from workers.ray_connect import init_ray

    usable = len(os.sched_getaffinity(0))
    counts = [k for k in cfg.workers if k <= usable]
    skipped = [k for k in cfg.workers if k > usable]
    if skipped:
        provenance.log(f"skipping {skipped} workers: this machine has {usable} usable cores")
    init_ray(num_cpus=sum(counts))  # idle jobs hold their actors; only one job samples at a time
    jobs: dict[int, TrainingJob] = {}
    try:
        for k in counts:
            jobs[k] = job(cfg, k).__enter__()
            jobs[k].iterate()  # warm-up
        per_round: dict[int, list[dict]] = {k: [] for k in counts}
        for r in range(cfg.rounds):
            for k in counts[r % len(counts):] + counts[: r % len(counts)]:
                per_round[k].append(rate([jobs[k].iterate() for _ in range(cfg.iterations)]))
                provenance.log(f"round {r + 1}, {k} worker(s): {per_round[k][-1]['steps_per_s']:,.0f} env steps/s")
    finally:
        for j in jobs.values():
            j.close()
        ray.shutdown()
    rows = {}
    for k, rounds in per_round.items():
        rows[str(k)] = {"workers": k, "rounds": rounds, "steps_per_s": [r["steps_per_s"] for r in rounds],
                        "mean": statistics.fmean(r["steps_per_s"] for r in rounds),
                        "sample_mean": statistics.fmean(r["sample_steps_per_s"] for r in rounds)}
    one = rows[str(counts[0])]["mean"] / counts[0]
    for row in rows.values():
        row["per_worker"] = row["mean"] / (row["workers"] * one)
    return {"rows": rows, "skipped": skipped, "usable_cores": usable}


# ------------------------------------------------------------------------- 2. + 3. nodes, node loss
def start_cluster(cfg: Config):
    """Head (0 CPUs) + `cfg.nodes` worker nodes on 127.0.0.1; this process connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    from workers.ray_connect import LOOPBACK, loopback_only

    loopback_only()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "node_ip_address": LOOPBACK})
    nodes = [cluster.add_node(num_cpus=cfg.workers_per_node, node_ip_address=LOOPBACK) for _ in range(cfg.nodes)]
    ray.init(address=cluster.address)
    return cluster, nodes


def nodes_and_loss(cfg: Config) -> dict:
    """One job across the cluster's nodes: rate before, during and after losing the last node."""
    import ray

    cluster, nodes = start_cluster(cfg)
    total = cfg.nodes * cfg.workers_per_node
    try:
        with job(cfg, total) as j:
            j.iterate()  # warm-up
            before = [j.iterate() for _ in range(cfg.iterations)]
            provenance.log(f"{cfg.nodes} nodes, {total} workers: {rate(before)['steps_per_s']:,.0f} env steps/s")
            delay = cfg.kill_after * statistics.fmean(i.seconds for i in before)
            killer = threading.Timer(delay, cluster.remove_node, args=(nodes[-1],))
            killer.start()
            during = j.iterate()
            killer.join()
            recovery = settle(j)
            after = [j.iterate() for _ in range(cfg.iterations)]
            pool = {name: getattr(j.pool, name, None) for name in ("restarts", "replacements", "reissued_requests")}
    finally:
        ray.shutdown()
        cluster.shutdown()
    b, a = rate(before), rate(after)
    share = cfg.workers_per_node / total
    loss = 1 - a["steps_per_s"] / b["steps_per_s"]
    return {"nodes": cfg.nodes, "workers_per_node": cfg.workers_per_node, "workers": total, "before": b,
            "kill_iteration": during.to_dict(), "kill_after_s": delay,
            "recovery_iterations": [i.to_dict() for i in recovery], "after": a, "node_share": share,
            "loss": loss, "loss_within_share": loss <= share, "pool": pool}


def settle(j: TrainingJob, most: int = 5) -> list[IterationFigures]:
    """Iterations until one needs no reissued request (Ray noticed the dead workers and the pool took them out
    of rotation): the failure detection's cost, kept out of the after-loss rate."""
    recovery: list[IterationFigures] = []
    while len(recovery) < most:
        reissued = j.pool.reissued_requests
        recovery.append(j.iterate())
        if j.pool.reissued_requests == reissued:
            break
    return recovery


def measure(cfg: Config) -> dict:
    return {"config": asdict(cfg), "workers": workers_sweep(cfg), "cluster": nodes_and_loss(cfg)}


# ----------------------------------------------------------------------------------- reporting
def render(data: dict) -> str:
    """The markdown table (the same as in the docs: benchmarks/report.py renders it)."""
    return "\n".join(report.render_scaling(data))


def parse_config(argv: Sequence[str] | None) -> tuple[Config, str | None]:
    d = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=d.config, help="job config (default: MAML on reach)")
    parser.add_argument("--workers", type=int, nargs="+", default=list(d.workers), help="worker counts to run")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="interleaved rounds of the worker sweep")
    parser.add_argument("--iterations", type=int, default=d.iterations, help="timed iterations per round, and "
                        "before/after the node loss")
    parser.add_argument("--nodes", type=int, default=d.nodes, help="Ray worker nodes (>= 2)")
    parser.add_argument("--workers-per-node", type=int, default=d.workers_per_node)
    parser.add_argument("--kill-after", type=float, default=d.kill_after, help="fraction of an iteration")
    provenance.add_job_args(parser, "scaling")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else d
    given = {k: v for k, v in vars(args).items() if k not in ("json", "quick", "overrides")
             and v != (list(d.workers) if k == "workers" else getattr(d, k))}
    cfg = replace(base, **{k: (tuple(v) if k == "workers" else v) for k, v in given.items()},
                  overrides=(*base.overrides, *args.overrides))
    if min(*cfg.workers, cfg.rounds, cfg.iterations, cfg.workers_per_node) < 1 or cfg.nodes < 2:
        parser.error("worker counts, --rounds, --iterations and --workers-per-node must be >= 1, --nodes >= 2")
    if not 0 <= cfg.kill_after <= 1:
        parser.error(f"--kill-after must be a fraction of an iteration in [0, 1], got {cfg.kill_after}")
    return cfg, args.json or (None if args.quick else str(provenance.default_path("scaling")))


def main(argv: Sequence[str] | None = None) -> int:
    provenance.run("scaling.py", argv, parse_config, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
