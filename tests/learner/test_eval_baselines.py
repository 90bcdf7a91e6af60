"""Baselines in the evaluation protocol: from scratch (fresh weights, same architecture and inner step)
and multi-task models (a learner or PolicyWeights), with the same tasks, steps, episodes and seeds."""

import json

import numpy as np
import pytest
import torch

from learner.builder import baseline_models, fresh_learner
from learner.config import LearnerConfig, load_config
from learner.evaluation import FROM_SCRATCH, EvalProtocol, baseline_metrics, evaluate_baselines, final_report
from learner.evaluation import evaluate as run_protocol
from learner.maml import MAML
from learner.plots import adaptation_figure, per_task_figure
from tests.fakes import POINT_SPEC, ROBOT, PointEnv, point_env_factory, point_tasks
from workers.pool import LocalWorkerPool

CONFIG = LearnerConfig(hidden_sizes=(16,), inner_lr=0.5, device="cpu", placement="driver")
TASKS = point_tasks(3, seed=9, split="test")
PROTOCOL = EvalProtocol(tuple(TASKS), (ROBOT,) * len(TASKS), steps=(0, 1, 2), episodes=3, horizon=8, seed=4)


@pytest.fixture
def pool():
    return LocalWorkerPool(1, point_env_factory)


@pytest.fixture
def trained():
    """A learner whose weights and normaliser differ from a fresh one's."""
    torch.manual_seed(1)
    learner = MAML(POINT_SPEC, CONFIG)
    with torch.no_grad():
        for p in learner.policy.parameters():
            p.add_(0.3)
        learner.policy.obs_mean.fill_(0.1)
        learner.policy.obs_std.fill_(2.0)
    return learner


def evaluate(learner, pool):
    return run_protocol(learner, pool, PROTOCOL)


def from_scratch_learner(learner, seed=0):
    return fresh_learner(POINT_SPEC, learner.config, learner.train_tasks, seed, like=learner.policy_weights("n"))


def baselines_of(learner, pool, models=None, from_scratch=True):
    return evaluate_baselines(baseline_models(learner, POINT_SPEC, CONFIG, (), models, from_scratch), pool, PROTOCOL)


def test_from_scratch_is_fresh_weights_same_architecture_and_normaliser(trained):
    rng = torch.get_rng_state()
    fresh = from_scratch_learner(trained, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's checkpointed random stream is untouched
    assert type(fresh) is type(trained) and fresh.config.inner_lr == trained.config.inner_lr
    ours, theirs = dict(trained.policy.named_parameters()), dict(fresh.policy.named_parameters())
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert not torch.equal(ours["hidden.0.weight"], theirs["hidden.0.weight"])
    assert torch.equal(fresh.policy.obs_mean, trained.policy.obs_mean)
    assert torch.equal(fresh.policy.obs_std, trained.policy.obs_std)
    again = from_scratch_learner(trained, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(fresh.policy.parameters(), again.policy.parameters()))


def test_baselines_follow_the_methods_protocol(trained, pool):
    method = evaluate(trained, pool)
    results = baselines_of(trained, pool, models={"same": trained})
    assert list(results) == [FROM_SCRATCH, "same"]
    assert results["same"].returns == method.returns  # same tasks, steps, episodes, seeds: same numbers
    scratch = results[FROM_SCRATCH]
    assert scratch.task_ids == method.task_ids and scratch.steps == method.steps
    assert scratch.env_steps == method.env_steps
    assert scratch.returns != method.returns
    assert scratch.returns == evaluate(from_scratch_learner(trained), pool).returns


def test_policy_weights_baseline_is_adapted_with_the_same_inner_step(trained, pool):
    other = MAML(POINT_SPEC, CONFIG)
    with torch.no_grad():
        other.policy.mean_head.weight.normal_(0, 0.5)
    weights = other.policy_weights("mtppo/final")
    results = baselines_of(trained, pool, models={"mtppo": weights}, from_scratch=False)
    assert list(results) == ["mtppo"]
    assert results["mtppo"].returns == evaluate(other, pool).returns
    loaded = baseline_models(trained, POINT_SPEC, CONFIG, (), {"mtppo": weights}, from_scratch=False)["mtppo"]
    assert loaded.config.inner_lr == trained.config.inner_lr


def test_a_baseline_that_cannot_adapt_is_refused(trained):
    with pytest.raises(TypeError, match=r"baseline 'bad' must be a learner or PolicyWeights, got dict"):
        baseline_models(trained, POINT_SPEC, CONFIG, (), {"bad": {"weights": 1}})


def test_report_json_and_figures(trained, pool, tmp_path):
    method = evaluate(trained, pool)
    baselines = baselines_of(trained, pool)
    report = json.loads(json.dumps(final_report(method, baselines)))
    assert report["per_task_returns"] == {str(k): v for k, v in method.returns.items()}  # as before
    scratch = report["baselines"][FROM_SCRATCH]
    assert scratch["task_ids"] == [t.task_id for t in TASKS]
    assert len(scratch["per_task_returns"]["2"]) == len(TASKS)
    assert set(baseline_metrics(baselines)) >= {f"eval_baseline/{FROM_SCRATCH}/return_step1",
                                                f"eval_baseline/{FROM_SCRATCH}/return_step1_stderr"}
    fig = adaptation_figure(method, None, "t", baselines)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["meta-trained", FROM_SCRATCH]
    fig = per_task_figure({"meta-trained": method, **baselines})
    mean_ax, task_ax = fig.axes
    assert len(mean_ax.get_legend().get_texts()) == 2
    assert len(task_ax.get_lines()) == 2 * len(TASKS)  # one line per task and method
    fig.savefig(tmp_path / "per_task.png")
    assert (tmp_path / "per_task.png").stat().st_size > 0


class GoalPointEnv(PointEnv):
    def set_task(self, params: dict) -> None:
        self.goal = np.asarray(params["goal"][:2], np.float32) - np.float32(0.3)


class RecordingTracker:
    run_id = "baselines"

    def __init__(self):
        self.dicts, self.figures, self.metrics = {}, [], {}

    def log_metrics(self, metrics, step):
        self.metrics.update(metrics)

    def log_dict(self, data, name):
        self.dicts[name] = data

    def log_figure(self, fig, name):
        self.figures.append(name)

    def log_artifact(self, *args, **kwargs):
        pass


def test_trainer_adds_the_from_scratch_curve_at_the_end(tmp_path):
    from learner.progress import Progress
    from learner.trainer import Trainer

    cfg = load_config(data={
        "fleet": {"num_train_tasks": 4, "num_test_tasks": 2, "horizon": 5},
        "workers": {"backend": "local", "num_workers": 1},
        "learner": {"hidden_sizes": [8], "ppo_epochs": 1, "device": "cpu", "placement": "driver"},
        "train": {"iterations": 1, "meta_batch_size": 2, "episodes_per_task": 2, "eval_every": 0, "eval_tasks": 2,
                  "eval_episodes": 2, "eval_steps": [0, 1]},
        "tracking": {"checkpoint_dir": str(tmp_path)},
    })
    tracker = RecordingTracker()
    pool = LocalWorkerPool(1, lambda family, robot, horizon: GoalPointEnv(horizon))
    Trainer(cfg, pool, tracker, POINT_SPEC, {}).run(Progress(1, start=0))
    report = tracker.dicts["eval/final.json"]
    assert report["baselines"][FROM_SCRATCH]["steps"] == [0, 1]
    assert {"eval/adaptation.png", "eval/per_task.png"} <= set(tracker.figures)
    assert f"eval_baseline/{FROM_SCRATCH}/return_step1" in tracker.metrics
