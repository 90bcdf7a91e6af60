"""Resume equivalence: N iterations straight through == N/2, checkpoint, a FRESH process restores and runs
to N; parameters, optimiser state, normaliser, sampler, RNGs and counters come out bitwise equal.

Batches are replayed: the uninterrupted run records every batch by request (task, seed, phase, policy
version), the resumed run gets the recorded batch for the same request (a request never seen is sampled
live and counted). The learner shuffles its PPO minibatches with torch's RNG (`minibatches > 1`) and, as
third-party code might, also draws from numpy's and python's global RNGs, so every RNG state matters.

Ablation: the resumed process leaves one piece of the checkpoint at its fresh-process value (as if it
were not saved or not restored); each one must change the outcome. (The CUDA RNG is saved and restored
too; it can only be ablated on a machine with CUDA, where nothing here draws from it.)

The default suite runs the same resume and ablations in this process (seconds); the fresh-process
versions are slow. Run as a script, this file is the fresh process:
`python test_resume_equivalence.py WORKDIR VARIANT...`.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # as a script (the fresh process)
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from learner.checkpoint import load_newest, rng_state, save_checkpoint, set_rng_state  # noqa: E402
from learner.config import Config, load_config  # noqa: E402
from learner.maml import MAML  # noqa: E402
from learner.trainer import Trainer  # noqa: E402
from tests.fakes import POINT_SPEC, PointEnv  # noqa: E402
from workers.batch import Batch, SampleRequest  # noqa: E402
from workers.pool import LocalWorkerPool, WorkerPool  # noqa: E402

SLOW = pytest.mark.slow  # fresh processes importing torch + the trainer: ~15 s quiet, minutes under load
ITERATIONS, HALF = 4, 2
ABLATIONS = {  # variant -> path into the checkpoint state
    "model": ("learner", "policy"),
    "optimizer": ("learner", "optimizer"),
    "normalizer": ("learner", "normalizer"),
    "torch_rng": ("rng", "torch"),
    "numpy_rng": ("rng", "numpy"),
    "python_rng": ("rng", "python"),
    "task_sampler": ("tasks",),
    "iteration": ("iteration",),
    "env_steps": ("env_steps",),
}


class GoalPointEnv(PointEnv):
    """The point env on the reach task split: the first two goal coordinates, scaled into its square."""

    def set_task(self, params: dict) -> None:
        self.goal = np.asarray(params["goal"][:2], np.float32) - np.float32(0.3)


def goal_point_factory(family, robot, horizon):
    return GoalPointEnv(horizon)


class GlobalRngMAML(MAML):
    """MAML whose minibatch order also comes from numpy's and python's global RNGs (as a third-party
    augmentation or env might draw from them): every RNG the checkpoint holds changes the updates."""

    def task_minibatches(self, num_tasks: int) -> list[torch.Tensor]:
        chunks = super().task_minibatches(num_tasks)  # contents from torch's RNG
        chunks = [chunks[i] for i in np.random.permutation(len(chunks))]
        random.shuffle(chunks)
        return chunks


class ReplayPool(WorkerPool):
    """Serves recorded batches by request; records what it has to sample live (`misses`)."""

    num_workers = 1

    def __init__(self, recorded: dict | None = None):
        self.recorded = {} if recorded is None else recorded
        self.live = LocalWorkerPool(1, goal_point_factory)
        self.misses = 0

    @staticmethod
    def key(request: SampleRequest) -> tuple:
        return (request.task.task_id, request.seed, request.phase, request.policy_version, request.episodes)

    def sample(self, requests, weights) -> list[Batch]:
        out = []
        for request in requests:
            if self.key(request) not in self.recorded:
                self.misses += 1
                self.recorded[self.key(request)] = self.live.sample([request], weights)[0]
            out.append(self.recorded[self.key(request)])
        return out


class NullTracker:
    run_id = "resume-test"

    def log_artifact(self, *args, **kwargs) -> None:
        pass


def config(workdir: Path) -> Config:
    return load_config(data={
        "fleet": {"num_train_tasks": 12, "num_test_tasks": 3, "horizon": 8},
        "workers": {"backend": "local", "num_workers": 1},
        "learner": {"hidden_sizes": [16], "minibatches": 4, "ppo_epochs": 2, "inner_lr": 0.3, "device": "cpu",
                    "placement": "driver", "outer_lr": 0.01},
        "train": {"iterations": ITERATIONS, "meta_batch_size": 4, "episodes_per_task": 3, "eval_every": 0,
                  "checkpoint_every": HALF, "keep_checkpoints": 5, "seed": 3},
        "tracking": {"checkpoint_dir": str(workdir / "checkpoints")},
    })


def build_trainer(workdir: Path, pool: WorkerPool) -> Trainer:
    """A trainer as a fresh process builds it (global RNGs seeded as a training script would)."""
    np.random.seed(0)
    random.seed(0)
    cfg = config(workdir)
    trainer = Trainer(cfg, pool, NullTracker(), POINT_SPEC, {})
    torch.manual_seed(cfg.train.seed)
    trainer.learner = GlobalRngMAML(POINT_SPEC, cfg.learner, trainer.tasks.tasks("train"))
    return trainer


def final_state(trainer: Trainer) -> dict:
    state = trainer.state_dict()
    for key in ("config", "wall_seconds"):  # a run's wall time is not part of its outcome
        state.pop(key)
    return state


def resume(workdir: Path, variant: str) -> dict:
    """The fresh process: restore the mid-run checkpoint (minus one piece for an ablation), run to N."""
    with open(workdir / "recorded.pkl", "rb") as handle:
        pool = ReplayPool(pickle.load(handle))
    trainer = build_trainer(workdir, pool)
    state = torch.load(workdir / "checkpoints" / "resume-test" / f"ckpt-{HALF:08d}.pt", weights_only=True)
    if variant != "full":
        *parents, leaf = ABLATIONS[variant]
        fresh, target = trainer.state_dict(), state
        for key in parents:
            fresh, target = fresh[key], target[key]
        target[leaf] = fresh[leaf]  # left as the fresh process has it
    trainer.load_state_dict(state)
    while trainer.iteration < ITERATIONS:
        trainer.iterate()
    return {**final_state(trainer), "misses": pool.misses}


def differences(a, b, path: str = "") -> list[str]:
    """Paths where two nested states differ (tensors bitwise)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [path]
    return [] if a == b else [path]


def run_fresh_process(workdir: Path, variants: list[str]) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, str(workdir), *variants], env=env, capture_output=True,
                          text=True, timeout=300, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {v: torch.load(workdir / f"resumed-{v}.pt", weights_only=True) for v in variants}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    """N iterations straight through, recording every batch; the checkpoint at N/2 is written on the way."""
    workdir = tmp_path_factory.mktemp("resume")
    pool = ReplayPool()
    trainer = build_trainer(workdir, pool)
    while trainer.iteration < ITERATIONS:
        trainer.iterate()
        if trainer.iteration == HALF:
            trainer.save()
    with open(workdir / "recorded.pkl", "wb") as handle:
        pickle.dump(pool.recorded, handle)
    return workdir, final_state(trainer)


@pytest.fixture(scope="module")
def ablated(uninterrupted) -> dict[str, dict]:
    """Every ablation, each from a freshly built trainer, in one fresh process (a trainer reseeds everything)."""
    return run_fresh_process(uninterrupted[0], list(ABLATIONS))


def test_every_rng_round_trips_through_a_weights_only_checkpoint(tmp_path):
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(2), random.random())
    save_checkpoint(tmp_path, 1, {"rng": state})  # refuses anything weights_only=True cannot load
    for _ in range(3):  # move every stream on
        torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(load_newest(tmp_path).state["rng"])
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


@SLOW
def test_resume_in_a_fresh_process_is_bitwise_equal(uninterrupted):
    workdir, expected = uninterrupted
    resumed = run_fresh_process(workdir, ["full"])["full"]
    assert resumed.pop("misses") == 0  # the resumed run asked for exactly the recorded requests
    assert differences(expected, resumed) == []
    assert resumed["iteration"] == ITERATIONS and resumed["learner"]["optimizer"]["state"]
    assert set(resumed["rng"]) == {"torch", "cuda", "numpy", "python"}


@SLOW
@pytest.mark.parametrize("variant", list(ABLATIONS))
def test_dropping_any_piece_of_the_checkpoint_breaks_equivalence(uninterrupted, ablated, variant):
    _, expected = uninterrupted
    resumed = dict(ablated[variant])
    resumed.pop("misses")
    found = differences(expected, resumed)
    assert found, f"the resume without {variant} came out identical: the checkpoint test cannot see it"
    if variant == "env_steps":  # a pure counter: only it can differ
        assert found == [".env_steps"]
    else:
        assert any(d.startswith((".learner.policy", ".learner.optimizer")) for d in found), found


# ---- the default suite's version: the same checkpoint restored in this process (seconds) -------------------
@pytest.fixture
def global_rngs_kept():
    """A resume reseeds and moves every global RNG; later tests get them back as they were."""
    state = rng_state()
    yield
    set_rng_state(state)


def test_resume_in_this_process_is_bitwise_equal(uninterrupted, global_rngs_kept):
    """A freshly built trainer restores the mid-run checkpoint here and runs to N: bitwise the straight run."""
    workdir, expected = uninterrupted
    resumed = resume(workdir, "full")
    assert resumed.pop("misses") == 0
    assert differences(expected, resumed) == []


@pytest.mark.parametrize("variant", list(ABLATIONS))
def test_resume_in_this_process_needs_every_piece(uninterrupted, global_rngs_kept, variant):
    """Each piece of the checkpoint left at its fresh value changes the outcome, so the check above sees it."""
    workdir, expected = uninterrupted
    resumed = resume(workdir, variant)
    resumed.pop("misses")
    found = differences(expected, resumed)
    assert found, f"the resume without {variant} came out identical"
    if variant != "env_steps":
        assert any(d.startswith((".learner.policy", ".learner.optimizer")) for d in found), found


def main(argv: list[str]) -> None:
    workdir, variants = Path(argv[0]), argv[1:]
    for variant in variants:
        torch.save(resume(workdir, variant), workdir / f"resumed-{variant}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
