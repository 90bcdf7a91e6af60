"""The one loop (learner/trainer.py) drives any learner through the interface (learner/interface.py): here an
off-policy learner with per-task replay buffers and several gradient steps per update, which no other code
path knows about. The loop's accounting (steps, returns, guard trips) comes from what was collected; the
update sees exactly the collected transitions, none lost or counted twice."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

from learner.config import load_config
from learner.evaluation import evaluate
from learner.interface import Collect, Learner
from learner.networks import GaussianMLPPolicy
from learner.trainer import Trainer, progress_text
from tests.fakes import POINT_SPEC, PointEnv
from workers.pool import LocalWorkerPool, WorkerPool

SPEC = POINT_SPEC.__class__(obs_dim=2, act_dim=2, hidden_sizes=(8,))


class ReplayLearner(Learner):
    """One collection phase per iteration into per-task buffers; `update` takes `steps` gradient steps on
    minibatches drawn from all buffers (regress the mean action towards rewarded actions)."""

    algorithm = "replay-test"

    def __init__(self, steps: int = 3, minibatch: int = 16):
        self.policy = GaussianMLPPolicy(SPEC, 0.5)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=1e-2)
        self.steps, self.minibatch = steps, minibatch
        self.buffers: dict[str, list[np.ndarray]] = defaultdict(list)  # task id -> [obs | action | reward] rows
        self.fresh = 0  # transitions added since the last update
        self.updates: list[dict] = []  # what each update saw

    def collect(self, tasks, iteration, episodes):
        weights = self.policy_weights(f"it{iteration}")
        batches = yield Collect("train", tuple(tasks), (weights,) * len(tasks), episodes, "support", label="explore")
        for batch in batches:
            valid = batch.mask > 0
            rows = np.concatenate([batch.obs[valid], batch.actions[valid], batch.rewards[valid][:, None]], axis=1)
            self.buffers[batch.task.task_id].append(rows)
            self.fresh += len(rows)

    def update(self):
        data = torch.as_tensor(np.concatenate([r for rows in self.buffers.values() for r in rows]))
        generator = torch.Generator().manual_seed(len(self.updates))
        for _ in range(self.steps):
            idx = torch.randint(len(data), (self.minibatch,), generator=generator)
            obs, actions, rewards = data[idx, :2], data[idx, 2:4], data[idx, 4]
            mean, _ = self.policy(obs)
            loss = (torch.softmax(rewards, 0)[:, None] * (mean - actions) ** 2).sum()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.updates.append({"buffer": {k: sum(len(r) for r in v) for k, v in self.buffers.items()},
                             "fresh": self.fresh, "rows": data.numpy().copy()})
        self.fresh = 0
        return {"loss": float(loss.detach()), "buffer_size": float(len(data))}

    def adaptation(self, tasks, rounds, version, episodes):
        weights = self.policy_weights(f"{version}/theta")
        for k in range(rounds):  # no adaptation: every round acts with the same policy
            yield Collect("eval", tuple(tasks), (weights,) * len(tasks), episodes, "eval", measures=(k,))

    def policy_weights(self, version):
        return self.policy.to_weights(version)

    def state_dict(self):
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "buffers": {k: list(v) for k, v in self.buffers.items()}}

    def load_state_dict(self, state):
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffers = defaultdict(list, {k: list(v) for k, v in state["buffers"].items()})


class RecordingPool(WorkerPool):
    """A local pool that keeps every batch it returns; every third step of task 0's episodes is guard-dropped."""

    num_workers = 1

    def __init__(self):
        self.live = LocalWorkerPool(1, lambda family, robot, horizon: GoalPointEnv(horizon))
        self.batches = []

    def sample(self, requests, weights):
        batches = self.live.sample(requests, weights)
        for batch in batches:
            if batch.task.task_id.endswith("/0"):
                batch.mask[:, ::3] = 0.0
                batch.stats["guard_trips"] = int(batch.mask.shape[0])
        self.batches += batches
        return batches


class GoalPointEnv(PointEnv):
    def set_task(self, params: dict) -> None:
        self.goal = np.asarray(params["goal"][:2], np.float32) - np.float32(0.3)


class NullTracker:
    run_id = "loop-test"


@pytest.fixture
def trainer(tmp_path):
    cfg = load_config(data={
        "fleet": {"num_train_tasks": 6, "num_test_tasks": 2, "horizon": 6},
        "workers": {"backend": "local", "num_workers": 1},
        "learner": {"hidden_sizes": [8], "device": "cpu", "placement": "driver"},
        "train": {"iterations": 3, "meta_batch_size": 3, "episodes_per_task": 2, "eval_every": 0, "eval_tasks": 2,
                  "eval_episodes": 2, "eval_steps": [0, 1]},
        "tracking": {"checkpoint_dir": str(tmp_path)},
    })
    torch.manual_seed(0)
    return Trainer(cfg, RecordingPool(), NullTracker(), SPEC, {}, learner=ReplayLearner())


def test_loop_accounts_for_exactly_what_was_collected(trainer):
    learner, pool = trainer.learner, trainer.pool
    totals = []
    for _ in range(3):
        before = len(pool.batches)
        metrics = trainer.iterate()
        new = pool.batches[before:]
        assert len(new) == 3 and {b.phase for b in new} == {"train"}
        assert metrics["explore_return"] == pytest.approx(np.mean([b.mean_return() for b in new]))
        assert metrics["explore_success"] == pytest.approx(np.mean([b.success_rate() for b in new]))
        assert metrics["guard_trips"] == sum(b.stats.get("guard_trips", 0) for b in new)
        totals.append(sum(b.num_steps for b in new))
        assert metrics["env_steps"] == sum(totals) == sum(b.num_steps for b in pool.batches)
        seen = learner.updates[-1]
        assert seen["fresh"] == totals[-1]  # this iteration's transitions reached this update, once
        by_task = defaultdict(int)
        for batch in pool.batches:
            by_task[batch.task.task_id] += batch.num_steps
        assert seen["buffer"] == dict(by_task)  # the buffers hold every collected transition, none twice
        collected = np.concatenate([np.concatenate([b.obs[b.mask > 0], b.actions[b.mask > 0],
                                                    b.rewards[b.mask > 0][:, None]], axis=1) for b in pool.batches])
        assert sorted(map(tuple, seen["rows"])) == sorted(map(tuple, collected))  # exactly those transitions
    assert trainer.iteration == 3 and trainer.guard_trips == sum(b.stats.get("guard_trips", 0) for b in pool.batches)
    assert progress_text(metrics).startswith(f"return explore {metrics['explore_return']:.1f} | success "
                                             f"{metrics['explore_success']:.2f} | ")


def test_seeds_follow_the_phase_stream_and_evaluation_uses_the_protocol(trainer):
    trainer.iterate()
    requests = trainer.requests(Collect("query", (trainer.tasks.tasks("train")[0],),
                                        (trainer.learner.policy_weights("v"),), 2, "query"))
    from learner.seeds import request_seed

    assert requests[0].seed == request_seed(trainer.cfg.train.seed, "query", trainer.iteration, 0)
    result = evaluate(trainer.learner, trainer.pool, trainer.protocol)
    assert result.steps == [0, 1] and len(result.returns[1]) == 2
    assert result.env_steps == sum(b.num_steps for b in trainer.pool.batches[-4:])


def test_an_unknown_seed_stream_is_refused(trainer):
    from learner.seeds import request_seed

    with pytest.raises(ValueError, match=r"unknown seed stream 'replay'.*learner/seeds.py"):
        request_seed(0, "replay", 1)
