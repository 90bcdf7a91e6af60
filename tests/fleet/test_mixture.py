"""Family mixtures, the curriculum hook, robot pairing in requests, and what checkpoints and MLflow keep."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from fleet.tasks import TaskDistribution, allocate
from learner.config import ConfigError, load_config

NAV = "examples.nav2d:Nav2D"
MIX = {"reach": 3.0, NAV: 1.0}


def test_allocate_is_proportional_with_a_minimum():
    assert allocate(100, [3, 1], 1) == [75, 25]
    assert allocate(10, [1, 1, 1], 1) == [4, 3, 3]
    assert allocate(3, [100, 1, 1], 1) == [1, 1, 1]
    assert sum(allocate(37, [0.2, 0.5, 0.3], 0)) == 37


def test_mixture_splits_are_per_family_disjoint_and_seeded():
    dist = TaskDistribution(MIX, num_train=40, num_test=8, seed=0)
    train, test = dist.tasks("train"), dist.tasks("test")
    assert Counter(t.family for t in train) == {"reach": 30, NAV: 10}
    assert Counter(t.family for t in test) == {"reach": 6, NAV: 2}
    assert len({t.task_id for t in train + test}) == 48
    for family in MIX:
        train_params = [t.params for t in train if t.family == family]
        assert not any(t.params in train_params for t in test if t.family == family)
    again = TaskDistribution(MIX, num_train=40, num_test=8, seed=0)
    assert again.tasks("train") == train and [t.params for t in again.tasks("test")] == [t.params for t in test]
    assert TaskDistribution(MIX, 40, 8, seed=1).tasks("train")[0].params != train[0].params
    # a one-entry mapping is the plain family: the same split as before mixtures existed
    one = TaskDistribution({"reach": 2.0}, 10, 2, 0)
    assert one.tasks("train") == TaskDistribution("reach", 10, 2, 0).tasks("train")


def test_family_weights_drive_sampling():
    dist = TaskDistribution({"reach": 3.0, NAV: 1.0}, num_train=20, num_test=2, seed=0, sampler_seed=5)
    counts = Counter(t.family for _ in range(2000) for t in dist.sample(1))
    assert 0.70 < counts["reach"] / 2000 < 0.80  # weight 3:1, whatever the task counts
    even_weights = TaskDistribution({"reach": 1.0, NAV: 1.0}, num_train=30, num_test=2, seed=0, sampler_seed=5)
    assert even_weights.tasks("train")[0].family == "reach"
    counts = Counter(t.family for _ in range(2000) for t in even_weights.sample(1))
    assert 0.45 < counts["reach"] / 2000 < 0.55


def test_mixture_state_round_trip_and_mismatch():
    dist = TaskDistribution(MIX, 20, 4, seed=0, sampler_seed=1)
    dist.sample(5)
    state = dist.get_state()
    expected = [t.task_id for t in dist.sample(5)]
    fresh = TaskDistribution(MIX, 20, 4, seed=0, sampler_seed=1)
    fresh.set_state(state)
    assert [t.task_id for t in fresh.sample(5)] == expected and fresh.draws == 2
    with pytest.raises(ValueError, match="state belongs to task distribution"):
        TaskDistribution({"reach": 1.0, NAV: 2.0}, 20, 4, seed=0).set_state(state)


def test_bad_mixtures_are_config_errors():
    with pytest.raises(ConfigError, match="weight of family 'reach' must be a finite number > 0"):
        load_config(data={"fleet": {"family": {"reach": 0}}})
    with pytest.raises(ConfigError, match="unknown task family 'juggle'"):
        load_config(data={"fleet": {"family": {"reach": 1, "juggle": 1}}})
    with pytest.raises(ConfigError, match=r"must share spaces"):
        load_config(data={"fleet": {"family": MIX}})  # a 2-D point and a 7-joint arm


def _batch(task, success):
    return SimpleNamespace(task=task, mean_return=lambda: -1.0, success_rate=lambda: success)


def only_first(iteration, tasks, stats):
    """A curriculum that samples the first task only."""
    return [1.0] + [0.0] * (len(tasks) - 1)


def test_curriculum_weights_drive_sampling_and_see_stats(monkeypatch):
    seen = []

    def recording(iteration, tasks, stats):
        seen.append((iteration, len(tasks), dict(stats)))
        return [1.0] * len(tasks)

    import examples.curriculum as module

    monkeypatch.setattr(module, "recording", recording, raising=False)
    dist = TaskDistribution("reach", 6, 2, seed=0, curriculum="examples.curriculum:recording")
    tasks = dist.sample(2)
    dist.observe([_batch(tasks[0], 1.0), _batch(tasks[1], 0.0)])
    dist.sample(2)
    assert [s[0] for s in seen] == [0, 1] and seen[0][1] == 6 and seen[0][2] == {}
    stats = seen[1][2]
    assert stats[tasks[0].task_id].mean_success == 1.0 and stats[tasks[1].task_id].visits == 1
    assert stats[tasks[1].task_id].last_iteration == 0

    monkeypatch.setattr(module, "only_first", only_first, raising=False)
    focused = TaskDistribution(MIX, 8, 2, seed=0, curriculum="examples.curriculum:only_first")
    assert {t.task_id for _ in range(20) for t in focused.sample(3)} == {"reach/train/0"}  # repeats when needed


def test_example_curriculum_favours_unsolved_tasks_and_its_stats_are_checkpointed():
    dist = TaskDistribution("reach", 10, 2, seed=0, sampler_seed=0, curriculum="examples.curriculum:favour_unsolved")
    for _ in range(6):  # warm-up: every task seen, tasks 0-4 solved, 5-9 not
        dist.observe([_batch(t, float(int(t.task_id.rsplit("/", 1)[1]) < 5)) for t in dist.sample(10)])
    p = dist.train_probabilities()
    np.testing.assert_allclose(p[:5], 0.1 / 6.0)  # FLOOR + (1 - 1)
    np.testing.assert_allclose(p[5:], 1.1 / 6.0)
    state = dist.get_state()
    restored = TaskDistribution("reach", 10, 2, seed=0, sampler_seed=0, curriculum=dist.curriculum_name)
    restored.set_state(state)
    np.testing.assert_allclose(restored.train_probabilities(), p)
    assert [t.task_id for t in restored.sample(4)] == [t.task_id for t in dist.sample(4)]


def test_bad_curriculum(monkeypatch):
    with pytest.raises(ConfigError, match=r"curriculum 'examples\.curriculum:nope'.*no attribute"):
        load_config(data={"fleet": {"curriculum": "examples.curriculum:nope"}})
    with pytest.raises(ConfigError, match="is not callable"):
        load_config(data={"fleet": {"curriculum": "examples.curriculum:WARMUP"}})
    import examples.curriculum as module

    monkeypatch.setattr(module, "short", lambda it, tasks, stats: [1.0], raising=False)
    dist = TaskDistribution("reach", 4, 1, seed=0, curriculum="examples.curriculum:short")
    with pytest.raises(ValueError, match="must return 4 finite weights"):
        dist.sample(1)


def _trainer(tmp_path, fleet_section):
    from learner.builder import env_spaces
    from learner.trainer import Trainer
    from workers.pool import LocalWorkerPool

    cfg = load_config(data={
        "fleet": {"family": NAV, "num_train_tasks": 8, "num_test_tasks": 4, "horizon": 8, **fleet_section},
        "workers": {"backend": "local"}, "learner": {"hidden_sizes": [8], "ppo_epochs": 1, "placement": "driver"},
        "train": {"meta_batch_size": 4, "episodes_per_task": 2, "eval_tasks": 4},
        "tracking": {"checkpoint_dir": str(tmp_path)}})
    spec, spaces = env_spaces(cfg)
    return Trainer(cfg, LocalWorkerPool(1), SimpleNamespace(run_id="r"), spec, spaces)


def test_trainer_pairs_tasks_with_fleet_robots(tmp_path):
    from learner.interface import Collect

    robots = [{"model": "kuka_iiwa", "id": "k", "count": 3, "link_mass_scale": {"uniform": [0.8, 1.2]}},
              {"model": "kuka_iiwa", "id": "new", "split": "test"}]
    trainer = _trainer(tmp_path, {"robots": robots})
    train_ids = {"k-0", "k-1", "k-2"}
    tasks = tuple(trainer.tasks.sample(4))
    weights = (trainer.learner.policy_weights("v"),) * len(tasks)
    support = trainer.requests(Collect("support", tasks, weights, 2, "support"))
    query = trainer.requests(Collect("query", tasks, weights, 2, "query"))
    assert [r.robot for r in support] == [r.robot for r in query]  # the same pairing in both phases
    assert {r.robot.robot_id for r in support} <= train_ids
    used = {r.robot.robot_id for it in range(6) for r in (setattr(trainer, "iteration", it), trainer.requests(
        Collect("support", tasks, weights, 2, "support")))[1]}
    assert used == train_ids
    assert [r.robot_id for r in trainer.protocol.robots] == ["new"] * 4  # held-out robot at evaluation
    trainer.iteration = 0
    metrics = trainer.iterate()
    assert metrics["guard_trips"] == 0 and metrics["guard_trips_total"] == 0
    assert trainer.tasks.get_state()["draws"] == 2 and len(trainer.tasks.get_state()["stats"]) == 4
    assert trainer.state_dict()["tasks"]["family"] == NAV
