"""`train.overlap`: the next iteration's first phase is collected while the learner updates (learner/trainer.py).

The overlapped loop must account for exactly what the sequential loop does (same env steps, same number of
batches, every (worker, seq) once, each batch reaching the learner once), act one policy version behind in
the prefetched phase only (and say so in `staleness_versions_*`), keep prefetches off checkpoints and
evaluations (a run resumed from a checkpoint continues bitwise), and finish, never drop, a prefetched
phase when a stop arrives.
"""

from __future__ import annotations

import signal
from collections import Counter

import numpy as np
import pytest
import torch

from learner.checkpoint import load_newest
from learner.config import load_config
from learner.maml import MAML
from learner.stopping import Stopped
from learner.trainer import Trainer
from policy import PolicySpec
from tests.fakes import PointEnv
from workers.pool import LocalWorkerPool, Pending, WorkerPool

SPEC = PolicySpec(obs_dim=2, act_dim=2, hidden_sizes=(8,))
ITERATIONS, CHECKPOINT_EVERY = 5, 3
# Iteration k's first phase was prefetched during iteration k-1 unless a checkpoint (after 3) or the
# start came between them.
PREFETCHED = [False, True, True, False, True]


class GoalPointEnv(PointEnv):
    """PointEnv with the reach family's 3-D goals (first two coordinates, shifted into reach)."""

    def set_task(self, params: dict) -> None:
        self.goal = np.asarray(params["goal"][:2], np.float32) - np.float32(0.3)


def point_env_factory(family, robot, horizon):
    return GoalPointEnv(horizon)


class Recorded(Pending):
    """A pending result that adds its batches to the recording pool's list once, when they are taken."""

    def __init__(self, inner: Pending, sink: list):
        self.inner, self.sink, self.concurrent, self.taken = inner, sink, inner.concurrent, False

    def result(self):
        batches = self.inner.result()
        if not self.taken:
            self.sink += batches
            self.taken = True
        return batches


class RecordingPool(WorkerPool):
    """Wraps a real pool: every batch it hands back (`batches`) and every phase submitted with its weights."""

    def __init__(self, inner: WorkerPool):
        self.inner, self.num_workers = inner, inner.num_workers
        self.batches: list = []
        self.submitted: list[tuple[str, dict]] = []  # (phase, version -> arrays) in submission order

    def sample(self, requests, weights):
        return self.submit(requests, weights).result()

    def submit(self, requests, weights):
        self.submitted.append((requests[0].phase, {v: w.arrays for v, w in weights.items()}))
        return Recorded(self.inner.submit(requests, weights), self.batches)

    def close(self):
        self.inner.close()


class RecordingMAML(MAML):
    """MAML that records which batches each update learned from and theta as the update found it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.learned: list[tuple[int, int]] = []  # (worker, seq) of every batch an update used
        self.pre_update: list[dict] = []  # theta's arrays at the start of each update
        self.on_update = lambda: None

    def learn(self, support, query):
        self.pre_update.append(self.policy_weights("probe").arrays)
        self.learned += [(b.worker_id, b.seq) for b in [*support, *query]]
        self.on_update()
        return super().learn(support, query)


class AnyTracker:
    """Takes every tracking call and keeps nothing."""

    run_id = "overlap-test"

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def make_trainer(tmp_path, pool: WorkerPool, overlap: bool, **train) -> Trainer:
    cfg = load_config(data={
        "fleet": {"num_train_tasks": 8, "num_test_tasks": 2, "horizon": 6},
        "workers": {"backend": "local", "num_workers": 2},
        "learner": {"algorithm": "maml", "hidden_sizes": [8], "device": "cpu", "placement": "driver",
                    "inner_lr": 0.3, "outer_lr": 0.01, "ppo_epochs": 2},
        "train": {"iterations": ITERATIONS, "meta_batch_size": 3, "episodes_per_task": 2, "eval_every": 0,
                  "eval_tasks": 2, "eval_episodes": 2, "eval_steps": [0, 1], "checkpoint_every": CHECKPOINT_EVERY,
                  "overlap": overlap, **train},
        "tracking": {"checkpoint_dir": str(tmp_path / "checkpoints")},
    })
    torch.manual_seed(cfg.train.seed)
    learner = RecordingMAML(SPEC, cfg.learner, ())
    return Trainer(cfg, RecordingPool(pool), AnyTracker(), SPEC, {}, learner=learner)


def train_by_hand(trainer: Trainer) -> list[dict]:
    """The loop of `Trainer.run` without evaluations: iterate, checkpoint on schedule."""
    metrics = []
    while trainer.iteration < trainer.cfg.train.iterations:
        metrics.append(trainer.iterate())
        if trainer.iteration % trainer.cfg.train.checkpoint_every == 0:
            trainer.save()
    return metrics


def assert_exact_accounting(trainer: Trainer, metrics: list[dict]) -> None:
    """Every batch the pool served was counted once and learned from once; none was lost."""
    batches = trainer.pool.batches
    keys = [(b.worker_id, b.seq) for b in batches]
    assert len(set(keys)) == len(keys)  # each (worker, seq) once
    assert Counter(trainer.learner.learned) == Counter(keys)  # each reached an update once
    assert sum(m["batches"] for m in metrics) == len(batches)
    assert trainer.env_steps == metrics[-1]["env_steps"] == sum(b.num_steps for b in batches)
    assert trainer.prefetched is None


def run_both(tmp_path, make_pool) -> tuple[Trainer, list, Trainer, list]:
    runs = []
    for overlap in (False, True):
        trainer = make_trainer(tmp_path / str(overlap), make_pool(), overlap)
        try:
            runs += [trainer, train_by_hand(trainer)]
        finally:
            trainer.pool.close()
    return tuple(runs)


def test_overlapped_loop_accounts_for_exactly_what_the_sequential_loop_does(tmp_path):
    sequential, seq_metrics, overlapped, ovl_metrics = run_both(tmp_path, lambda: LocalWorkerPool(2, point_env_factory))
    for trainer, metrics in ((sequential, seq_metrics), (overlapped, ovl_metrics)):
        assert_exact_accounting(trainer, metrics)
    assert overlapped.env_steps == sequential.env_steps == ITERATIONS * 2 * 3 * 2 * 6  # phases x tasks x eps x H
    assert len(overlapped.pool.batches) == len(sequential.pool.batches) == ITERATIONS * 2 * 3
    assert [m["batches"] for m in ovl_metrics] == [m["batches"] for m in seq_metrics]
    # The overlapped loop learned from different (staler) data: its policy moved differently.
    assert any(not torch.equal(a, b) for a, b in zip(overlapped.learner.policy.parameters(),
                                                     sequential.learner.policy.parameters()))


def support_weights(trainer: Trainer) -> list[dict]:
    return [next(iter(weights.values())) for phase, weights in trainer.pool.submitted if phase == "support"]


def same_arrays(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_prefetched_phases_act_one_version_behind_and_say_so(tmp_path):
    sequential, seq_metrics, overlapped, ovl_metrics = run_both(tmp_path, lambda: LocalWorkerPool(1, point_env_factory))
    assert [m["staleness_versions_max"] for m in seq_metrics] == [0.0] * ITERATIONS
    assert [m["staleness_versions_max"] for m in ovl_metrics] == [float(p) for p in PREFETCHED]
    assert [m["staleness_versions_mean"] for m in ovl_metrics] == [0.5 * p for p in PREFETCHED]  # support of 2
    for name, trainer in (("sequential", sequential), ("overlapped", overlapped)):
        support, theta = support_weights(trainer), trainer.learner.pre_update
        for k in range(ITERATIONS):
            behind = name == "overlapped" and PREFETCHED[k]
            # Prefetched: collected before update k-1 ran, with the theta that update started from.
            assert same_arrays(support[k], theta[k - 1] if behind else theta[k]), (name, k)
            if k:
                assert not same_arrays(theta[k - 1], theta[k])  # each update changed theta: the check can fail
    for m in ovl_metrics + seq_metrics:
        assert 0.0 <= m["learner_blocked_fraction"] <= 1.0 + 1e-9
    # An in-process pool samples at submit: nothing runs during the update, which blocks the workers throughout.
    for m in ovl_metrics:
        assert m["learner_blocked_fraction"] >= m["learn_seconds"] / m["iteration_seconds"] - 1e-9


def comparable(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ("config", "wall_seconds")}


def assert_same_state(a, b, path="state") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    else:
        assert a == b, path


def test_a_run_resumed_from_a_checkpoint_continues_bitwise_with_overlap(tmp_path):
    straight = make_trainer(tmp_path, LocalWorkerPool(1, point_env_factory), overlap=True)
    train_by_hand(straight)
    resumed = make_trainer(tmp_path, LocalWorkerPool(1, point_env_factory), overlap=True)
    state = torch.load(tmp_path / "checkpoints" / "overlap-test" / f"ckpt-{CHECKPOINT_EVERY:08d}.pt",
                       weights_only=True)
    resumed.load_state_dict(state)
    metrics = train_by_hand(resumed)
    assert [m["staleness_versions_max"] for m in metrics] == [float(p) for p in PREFETCHED[CHECKPOINT_EVERY:]]
    assert_same_state(comparable(straight.state_dict()), comparable(resumed.state_dict()))
    tail = straight.pool.batches[-len(resumed.pool.batches):]
    for a, b in zip(tail, resumed.pool.batches, strict=True):  # the same episodes after the resume
        assert a.task == b.task and np.array_equal(a.obs, b.obs) and np.array_equal(a.actions, b.actions)


def test_a_checkpoint_refuses_a_prefetched_phase_in_flight(tmp_path):
    trainer = make_trainer(tmp_path, LocalWorkerPool(1, point_env_factory), overlap=True)
    trainer.iterate()
    assert trainer.prefetched is not None  # iteration 1's support is on its way
    with pytest.raises(RuntimeError, match="in flight: a checkpoint now would lose it"):
        trainer.save()


class LateStop:
    """A StopOnSignal whose signal arrives when the test says so."""

    requested: int | None = None


def test_a_stop_during_an_overlapped_update_finishes_the_prefetched_iteration(tmp_path):
    trainer = make_trainer(tmp_path, LocalWorkerPool(1, point_env_factory), overlap=True, checkpoint_every=100,
                           iterations=10)
    stop = LateStop()

    def signal_during_update_1():
        if len(trainer.learner.pre_update) == 2:  # update of iteration 1: iteration 2's support is in flight
            assert trainer.prefetched is not None
            stop.requested = signal.SIGTERM

    trainer.learner.on_update = signal_during_update_1
    with pytest.raises(Stopped) as stopped:
        trainer.run(stop=stop)
    assert stopped.value.iteration == 3  # iteration 2 finished on its prefetched support, nothing more started
    saved = load_newest(trainer.checkpoint_dir)
    assert saved.path.name == "ckpt-00000003.pt"
    batches = trainer.pool.batches
    assert len(batches) == 3 * 2 * 3 and saved.state["env_steps"] == sum(b.num_steps for b in batches)
    assert Counter(trainer.learner.learned) == Counter((b.worker_id, b.seq) for b in batches)


@pytest.mark.integration
def test_overlap_on_a_real_ray_pool_keeps_exact_accounting_and_equals_the_local_pool(ray_local, tmp_path):
    import sys

    import ray.cloudpickle

    from workers.ray_pool import RayWorkerPool

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the env factory ships by value
    sequential, seq_metrics, overlapped, ovl_metrics = run_both(tmp_path, lambda: RayWorkerPool(2, point_env_factory))
    for trainer, metrics in ((sequential, seq_metrics), (overlapped, ovl_metrics)):
        assert_exact_accounting(trainer, metrics)
        assert {b.worker_id for b in trainer.pool.batches} == {0, 1}
    assert overlapped.env_steps == sequential.env_steps and len(overlapped.pool.batches) == len(sequential.pool.batches)
    assert [m["staleness_versions_max"] for m in ovl_metrics] == [float(p) for p in PREFETCHED]
    # Seeded requests: the Ray workers collected what in-process ones would have, so the learning is the same.
    local = make_trainer(tmp_path / "local", LocalWorkerPool(1, point_env_factory), overlap=True)
    train_by_hand(local)
    assert_same_state(comparable(local.state_dict()), comparable(overlapped.state_dict()))


@pytest.mark.slow  # ~10-25 s: an actor process starts and imports torch
@pytest.mark.integration
def test_overlap_with_the_learner_in_an_actor_equals_the_driver_learner(ray_local, tmp_path):
    """The update runs in the learner's actor while the pool collects: same learning as an in-driver learner."""
    from learner.builder import place_learner
    from learner.remote import PROCESS_RNG, RemoteLearner

    states = []
    for placement in ("driver", "actor"):
        trainer = make_trainer(tmp_path / placement, LocalWorkerPool(1, point_env_factory), overlap=True)
        config = trainer.cfg.learner.model_copy(update={"placement": placement})
        trainer.learner = place_learner(SPEC, config, (), seed=5)
        try:
            assert isinstance(trainer.learner, RemoteLearner) == (placement == "actor")
            metrics = train_by_hand(trainer)
            assert [m["staleness_versions_max"] for m in metrics] == [float(p) for p in PREFETCHED]
            learner_state = trainer.learner.state_dict()
            learner_state.pop(PROCESS_RNG, None)
            states.append((trainer.env_steps, trainer.tasks.get_state(), learner_state))
        finally:
            trainer.learner.close()
    assert_same_state(states[0], states[1])
