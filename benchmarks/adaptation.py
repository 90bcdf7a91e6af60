"""Batched MAML adaptation (vmap over the meta-batch) vs a per-task Python loop doing the same maths.

One "outer gradient" = adapt theta on every task's support data (one policy-gradient step,
`learner.adaptation`), PPO-clip loss of every task's query data under its adapted params, mean over
tasks, gradient back to theta (through the inner step unless first order). Two implementations:

- ``batched``: ``adapt_batched`` (vmap of ``torch.func.grad``) and a vmapped outer loss, as
  ``learner/maml.py`` runs them;
- ``loop``: for each task, ``torch.autograd.grad(create_graph=not first_order)`` on that task's
  support loss, then its query loss; the textbook per-task MAML gradient.

Synthetic batches shaped like reach (obs 20, act 3, 10 episodes x 50 steps per task, a 64x64 tanh
policy). Both implementations first get the same inputs and must agree (loss and every gradient
within 1e-5); then they are timed side by side, interleaved, in the same run.

Only torch, numpy and our ``learner.adaptation`` / ``learner.losses`` / ``learner.networks`` /
``workers.policy`` are imported: the script runs where Ray, MLflow and pybullet are not installed.

Usage::

    python benchmarks/adaptation.py                        # CPU, meta-batch 5, 20, 40, second + first order
    python benchmarks/adaptation.py --device cuda --json out.json
    python benchmarks/adaptation.py --quick                # tiny smoke run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import provenance
from learner.adaptation import Params, TaskData, adapt_batched, batched, inner_loss, log_prob
from learner.losses import ppo_clip_loss
from learner.networks import GaussianMLPPolicy
from policy import PolicySpec

TOLERANCE = 1e-5
TARGET_SPEEDUP = 3.0  # at meta-batch 20 on CPU (the target)
INNER_LR, CLIP = 0.1, 0.2


@dataclass(frozen=True)
class Shape:
    """Sizes of the synthetic meta-batch."""

    obs_dim: int = 20
    act_dim: int = 3
    episodes: int = 10
    horizon: int = 50
    hidden: tuple[int, ...] = (64, 64)


@dataclass
class Case:
    """Timings (seconds per outer gradient) of one (order, meta-batch) case."""

    order: str
    meta_batch: int
    max_abs_diff: float
    batched_s: list[float] = field(default_factory=list)
    loop_s: list[float] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return statistics.median(self.loop_s) / statistics.median(self.batched_s)


def synthetic_data(policy: GaussianMLPPolicy, n: int, shape: Shape, seed: int, device: torch.device) -> TaskData:
    """[N, E, H, ...] support/query-like data: actions sampled from the policy itself (on-policy), the
    behaviour log-probabilities slightly off (ratios near 1, as after a few PPO epochs)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, shape.episodes, shape.horizon, shape.obs_dim, generator=g)
    noise = torch.randn(n, shape.episodes, shape.horizon, shape.act_dim, generator=g)
    adv = torch.randn(n, shape.episodes, shape.horizon, generator=g)
    lengths = torch.randint(shape.horizon // 2, shape.horizon + 1, (n, shape.episodes), generator=g)
    mask = (torch.arange(shape.horizon) < lengths[..., None]).float()  # some episodes end early
    data = {"obs": obs.to(device), "adv": (adv * mask).to(device), "mask": mask.to(device)}
    with torch.no_grad():
        mean, log_std = policy(data["obs"])
        data["actions"] = mean + torch.exp(log_std) * noise.to(device)
        logp = log_prob(policy, dict(policy.named_parameters()), data["obs"], data["actions"])
        data["logp_old"] = logp + 0.1 * torch.randn(logp.shape, generator=g).to(device)
    return data


def query_loss(policy: GaussianMLPPolicy, params: Params, data: TaskData) -> torch.Tensor:
    """One task's PPO-clip loss under `params` (as MetaLearner.ppo_terms, without the KL)."""
    logp = log_prob(policy, params, data["obs"], data["actions"])
    return ppo_clip_loss(logp, data["logp_old"], data["adv"], data["mask"], CLIP)


def batched_gradient(policy, support: TaskData, query: TaskData, first_order: bool) -> tuple[torch.Tensor, list]:
    """The vmapped path of learner/maml.py: adapt all tasks at once, vmapped outer loss."""
    theta = dict(policy.named_parameters())
    adapted = adapt_batched(policy, theta, support, INNER_LR, steps=1, first_order=first_order)
    loss = batched(lambda p, d: query_loss(policy, p, d))(adapted, query).mean()
    return loss.detach(), list(torch.autograd.grad(loss, list(theta.values())))


def loop_gradient(policy, support: TaskData, query: TaskData, first_order: bool) -> tuple[torch.Tensor, list]:
    """The same maths one task at a time with torch.autograd (create_graph for second order)."""
    theta = dict(policy.named_parameters())
    n = support["obs"].shape[0]
    total = 0.0
    for i in range(n):
        task_support = {k: v[i] for k, v in support.items()}
        task_query = {k: v[i] for k, v in query.items()}
        inner = inner_loss(policy, theta, task_support)
        grads = torch.autograd.grad(inner, list(theta.values()), create_graph=not first_order)
        adapted = {k: p - INNER_LR * g for (k, p), g in zip(theta.items(), grads)}
        total = total + query_loss(policy, adapted, task_query)
    loss = total / n
    return loss.detach(), list(torch.autograd.grad(loss, list(theta.values())))


def max_difference(a: tuple[torch.Tensor, list], b: tuple[torch.Tensor, list]) -> float:
    """Largest absolute difference over the loss and every gradient entry."""
    diffs = [float((a[0] - b[0]).abs())] + [float((x - y).abs().max()) for x, y in zip(a[1], b[1])]
    return max(diffs)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def run_case(order: str, n: int, shape: Shape, repeats: int, device: torch.device) -> Case:
    """Check both paths agree on one meta-batch, then time them interleaved (after one warm-up each)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(PolicySpec(shape.obs_dim, shape.act_dim, shape.hidden), init_std=0.5).to(device)
    with torch.no_grad():  # a non-trivial output layer, so the second-order terms are not negligible
        policy.mean_head.weight.normal_(0, 0.1)
    support, query = synthetic_data(policy, n, shape, 1, device), synthetic_data(policy, n, shape, 2, device)
    first_order = order == "first"
    run_batched = lambda: batched_gradient(policy, support, query, first_order)  # noqa: E731
    run_loop = lambda: loop_gradient(policy, support, query, first_order)  # noqa: E731
    diff = max_difference(run_batched(), run_loop())  # doubles as the warm-up
    if not diff <= TOLERANCE:
        raise SystemExit(f"{order} order, meta-batch {n}: batched and loop gradients differ by {diff:.3g} "
                         f"(> {TOLERANCE})")
    case = Case(order, n, diff)
    for _ in range(repeats):
        case.batched_s.append(timed(run_batched, device))
        case.loop_s.append(timed(run_loop, device))
    return case


def table(cases: list[Case], device: str) -> str:
    lines = [f"| order | meta-batch | batched ms ({device}) | loop ms ({device}) | loop / batched | max abs diff |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in cases:
        lines.append(f"| {c.order} | {c.meta_batch} | {1000 * statistics.median(c.batched_s):.1f} | "
                     f"{1000 * statistics.median(c.loop_s):.1f} | {c.speedup:.2f}x | {c.max_abs_diff:.1e} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--meta-batch", type=int, nargs="+", default=[5, 20, 40], help="meta-batch sizes")
    parser.add_argument("--orders", nargs="+", choices=("second", "first"), default=["second", "first"])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per path and case (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: meta-batch 2, 2 episodes x 5 steps")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the raw JSON (default: results/adaptation-DEVICE.json; --quick writes "
                        "only with --json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if any(n < 1 for n in args.meta_batch) or args.repeats < 1:
        parser.error("--meta-batch sizes and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    prov = provenance.start("adaptation.py", argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = Shape(episodes=2, horizon=5) if args.quick else Shape()
    sizes, repeats = ([2], 1) if args.quick else (args.meta_batch, args.repeats)
    device = torch.device(args.device)
    cases = [run_case(order, n, shape, repeats, device) for order in args.orders for n in sizes]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{shape.episodes} episodes x {shape.horizon} steps, obs {shape.obs_dim}, act {shape.act_dim}, "
          f"hidden {list(shape.hidden)}, median of {repeats}")
    print(table(cases, args.device))
    for c in cases:
        if c.meta_batch == 20 and args.device == "cpu":
            verdict = "meets" if c.speedup >= TARGET_SPEEDUP else "misses"
            print(f"{c.order} order, meta-batch 20: {c.speedup:.2f}x ({verdict} the {TARGET_SPEEDUP:.0f}x target)")
    json_out = args.json or (None if args.quick else provenance.default_path(f"adaptation-{args.device}"))
    if json_out:
        data = {"device": args.device, "device_name": name, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "shape": asdict(shape),
                "cases": [{**asdict(c), "speedup": c.speedup} for c in cases]}
        provenance.write(json_out, data, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
