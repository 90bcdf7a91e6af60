"""On-robot policy step latency: `PolicyDriver.act` (batch of one, numpy, what `fleet run` calls every control step)
for each policy kind at the robots-arm sizes.

Sizes (configs/robots-arm.yaml's robot_reach on a 7-joint KUKA): observation 23, action 7, hidden 128x128; RMA:
history 10, adaptation module 256x128, latent 8 (FiLM), extrinsics encoder 64 on the 12 joint gains. The other kinds
at the same actor sizes: ``mlp`` (feed-forward), ``film`` (task-conditioned, 3-d task vector from the task's
params), ``rl2`` (GRU 128), ``pearl`` (latent 8, z from a posterior), ``belief`` (256 particles, task model 128x128,
3-d task vector), ``rma`` (adaptive: its history state advanced and the adaptation module run every step) and
``rma-fixed`` (the version `fleet adapt` registers: the actor with z fixed). Weights are random (latency does not
depend on their values); each kind runs ``--steps`` timed steps in episodes of 50 (``record`` after each, as the
runtime does, outside the timing) after ``--warmup`` untimed ones. Reported per kind: median, p99 and mean in ms.
BLAS runs on one thread (``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` default to 1 when
run as a script, as a robot's control process would pin them: on a loaded machine a threaded BLAS makes the
256-particle belief step 40x slower); the values in effect are recorded.

    python benchmarks/onboard_latency.py                      # -> results/onboard-latency.json
    python benchmarks/onboard_latency.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# before numpy loads its BLAS: one thread, as on the robot (see the docstring)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance
from policy import PolicySpec, PolicyWeights
from policy.driver import PolicyDriver
from policy.taskvec import TaskVectorEncoder

OBS, ACT, HIDDEN, EPISODE = 23, 7, (128, 128), 50
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
TARGET_MS = 1.0  # rma, per step on the robot's CPU
TASK = {"goal": [0.6, 0.1, 0.4]}
TRAIN_TASKS = [("robot_reach", f"robot_reach/train/{i}", {"goal": [0.5 + 0.05 * i, 0.1 * i - 0.2, 0.35]})
               for i in range(5)]
SPECS = {
    "mlp": PolicySpec(OBS, ACT, HIDDEN),
    "film": PolicySpec(OBS, ACT, HIDDEN, conditioning="film", context_dim=3),
    "rl2": PolicySpec(OBS, ACT, (128,), kind="rl2"),
    "pearl": PolicySpec(OBS, ACT, HIDDEN, "relu", "pearl", "concat", 8),
    "belief": PolicySpec(OBS, ACT, HIDDEN, kind="belief", conditioning="concat", context_dim=3, model_sizes=(128, 128)),
    "rma": PolicySpec(OBS, ACT, HIDDEN, conditioning="film", context_dim=8, kind="rma", model_sizes=(256, 128),
                      privileged_dim=12, history=10, encoder_sizes=(64,)),
}
KINDS = (*SPECS, "rma-fixed")


def weights(spec: PolicySpec, rng: np.random.Generator) -> PolicyWeights:
    """Random weights of `spec` (scaled 1/sqrt(fan-in), so activations stay in range), unit normaliser."""
    arrays = {}
    for name, shape in spec.weight_shapes().items():
        scale = 1.0 / np.sqrt(shape[-1]) if len(shape) > 1 else 0.1
        arrays[name] = rng.normal(0.0, scale, shape).astype(np.float32)
    arrays["obs_mean"], arrays["obs_std"] = np.zeros(OBS, np.float32), np.ones(OBS, np.float32)
    if spec.kind == "belief":
        arrays["belief.low"], arrays["belief.high"] = -np.ones(3, np.float32), np.ones(3, np.float32)
        arrays["belief.settings"] = np.asarray([256, 2, 10.0, 0.2], np.float32)  # configs/reach.yaml's belief
    if spec.kind == "rma":
        arrays["rma.mode"] = np.ones(1, np.float32)  # adaptive: what is published
    return PolicyWeights(spec, arrays, "bench")


def driver_for(kind: str, rng: np.random.Generator) -> PolicyDriver:
    """A driver of `kind` at the robots-arm sizes, told its task (or latent) as `fleet run` would be."""
    if kind == "rma-fixed":
        from dataclasses import replace

        rma = weights(SPECS["rma"], rng)
        actor = replace(rma.spec, kind="mlp", model_sizes=(), privileged_dim=0, history=0, encoder_sizes=())
        arrays = {k: v for k, v in rma.arrays.items() if k in actor.weight_shapes()}
        section = {"mode": "film", "fixed": {"vector": rng.normal(0, 1, 8).tolist()}}
        return PolicyDriver(PolicyWeights(actor, arrays, "bench"), {"conditioning": section})
    manifest = {}
    if kind == "film":
        manifest["conditioning"] = {"mode": "film", **TaskVectorEncoder.from_tasks("params", TRAIN_TASKS).to_manifest()}
    driver = PolicyDriver(weights(SPECS[kind], rng), manifest)
    driver.set_task(TASK, "robot_reach")
    if kind == "pearl":
        driver.set_latent(rng.normal(0, 1, 8))
    return driver


def time_steps(driver: PolicyDriver, steps: int, warmup: int, seed: int) -> np.ndarray:
    """Milliseconds of each of `steps` timed `act` calls (after `warmup` untimed), in episodes of EPISODE steps."""
    rng, obs_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    driver.begin_trial(rng)
    out = np.zeros(steps)
    for i in range(warmup + steps):
        if i % EPISODE == 0:
            driver.begin_episode()
        obs = obs_rng.normal(0.0, 1.0, OBS).astype(np.float32)
        started = time.perf_counter()
        action = driver.act(obs, rng, deterministic=True)
        elapsed = time.perf_counter() - started
        driver.record(obs, action, -1.0, obs)  # the runtime's bookkeeping, outside the step's timing
        if i >= warmup:
            out[i - warmup] = 1e3 * elapsed
    return out


def measure(cfg: argparse.Namespace) -> dict:
    """Per kind: median, p99, mean (ms) of `cfg.steps` timed steps; the rma target and whether it is met."""
    rows = {}
    for i, kind in enumerate(cfg.kinds):
        ms = time_steps(driver_for(kind, np.random.default_rng(i)), cfg.steps, cfg.warmup, cfg.seed)
        rows[kind] = {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
                      "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "steps": cfg.steps}
        provenance.log(f"{kind}: median {rows[kind]['median_ms']:.3f} ms, p99 {rows[kind]['p99_ms']:.3f} ms")
    sizes = {"obs": OBS, "act": ACT, "hidden": list(HIDDEN), "history": 10, "adaptation": [256, 128], "latent": 8,
             "episode_steps": EPISODE, "blas_threads": {name: os.environ.get(name) for name in BLAS_THREADS}}
    rma = rows.get("rma")
    return {"sizes": sizes, "kinds": rows, "target_ms": TARGET_MS, "warmup": cfg.warmup,
            "rma_median_within_target": None if rma is None else rma["median_ms"] <= TARGET_MS}


def render(data: dict) -> str:
    lines = ["| kind | median ms | p99 ms | mean ms |", "|---|---|---|---|"]
    lines += [f"| {kind} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} |"
              for kind, r in data["kinds"].items()]
    if data["rma_median_within_target"] is not None:
        verdict = "met" if data["rma_median_within_target"] else "NOT met"
        lines.append(f"\nrma per step: median {data['kinds']['rma']['median_ms']:.3f} ms (target <= "
                     f"{data['target_ms']:g} ms: {verdict})")
    return "\n".join(lines)


def parse_config(argv: list[str] | None) -> tuple[argparse.Namespace, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="kinds to time (default all)")
    parser.add_argument("--steps", type=int, default=5000, help="timed steps per kind (default 5000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed steps per kind first (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="raw JSON path (default results/onboard-latency.json; --quick "
                        "writes only with --json)")
    parser.add_argument("--quick", action="store_true", help="200 steps, 20 warm-up: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 200, 20
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    default = None if args.quick else str(provenance.default_path("onboard-latency"))
    return args, args.json or default


def main(argv: list[str] | None = None) -> int:
    provenance.run("onboard_latency.py", argv, parse_config, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
