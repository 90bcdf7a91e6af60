"""Task, task families and TaskDistribution: disjoint seeded splits and a checkpointable sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fleet import FAMILIES, Task, TaskDistribution, TaskFamily, UnknownNameError, get_family
from fleet.envs.reach_task import GOAL_CENTER, GOAL_HALF_EXTENTS, MIN_GOAL_SEPARATION


def goals(tasks: tuple[Task, ...]) -> np.ndarray:
    return np.array([t.params["goal"] for t in tasks])


def test_same_seed_gives_identical_tasks_and_other_seed_differs():
    a = TaskDistribution("reach", num_train=20, num_test=5, seed=7)
    b = TaskDistribution("reach", num_train=20, num_test=5, seed=7)
    c = TaskDistribution("reach", num_train=20, num_test=5, seed=8)
    assert [t.to_dict() for t in a.train_tasks + a.test_tasks] == [
        t.to_dict() for t in b.train_tasks + b.test_tasks
    ]
    assert not np.array_equal(goals(a.train_tasks), goals(c.train_tasks))


def test_train_set_does_not_depend_on_test_size():
    small = TaskDistribution("reach", num_train=10, num_test=1, seed=3)
    large = TaskDistribution("reach", num_train=10, num_test=50, seed=3)
    assert small.train_tasks == large.train_tasks


def test_splits_are_disjoint_and_separated():
    # Enough tasks that ~60 test draws land within 1 cm of a train goal and must be rejected.
    dist = TaskDistribution("reach", num_train=2000, num_test=200, seed=0)
    train, test = goals(dist.train_tasks), goals(dist.test_tasks)
    assert len(train) == 2000 and len(test) == 200
    distances = np.linalg.norm(train[:, None, :] - test[None, :, :], axis=-1)
    assert distances.min() >= MIN_GOAL_SEPARATION
    assert not {tuple(g) for g in train} & {tuple(g) for g in test}


def test_goals_lie_in_the_goal_region_as_plain_floats():
    dist = TaskDistribution("reach", num_train=200, num_test=50, seed=1)
    all_goals = goals(dist.train_tasks + dist.test_tasks)
    low = np.subtract(GOAL_CENTER, GOAL_HALF_EXTENTS)
    high = np.add(GOAL_CENTER, GOAL_HALF_EXTENTS)
    assert np.all(all_goals >= low) and np.all(all_goals <= high)
    assert all(type(x) is float for t in dist.train_tasks for x in t.params["goal"])
    json.dumps([t.to_dict() for t in dist.train_tasks])


def test_task_ids_are_unique_and_named_by_split():
    dist = TaskDistribution("reach", num_train=5, num_test=3, seed=0)
    assert [t.task_id for t in dist.tasks("train")] == [f"reach/train/{i}" for i in range(5)]
    assert [t.task_id for t in dist.tasks("test")] == [f"reach/test/{i}" for i in range(3)]
    assert all(t.family == "reach" for t in dist.train_tasks)


def test_sample_without_replacement_up_to_pool_size_then_with_replacement():
    dist = TaskDistribution("reach", num_train=8, num_test=4, seed=0)
    batch = dist.sample(8)
    assert sorted(t.task_id for t in batch) == sorted(t.task_id for t in dist.train_tasks)
    test_batch = dist.sample(3, split="test")
    assert len({t.task_id for t in test_batch}) == 3 and all("/test/" in t.task_id for t in test_batch)
    big = dist.sample(30, split="test")
    assert len(big) == 30 and {t.task_id for t in big} <= {t.task_id for t in dist.test_tasks}
    assert dist.sample(0) == []


def test_sampling_is_seeded():
    a = TaskDistribution("reach", num_train=50, num_test=5, seed=2)
    b = TaskDistribution("reach", num_train=50, num_test=5, seed=2)
    assert [t.task_id for t in a.sample(10)] == [t.task_id for t in b.sample(10)]


def test_state_round_trip_reproduces_later_samples():
    dist = TaskDistribution("reach", num_train=50, num_test=10, seed=4)
    dist.sample(7)
    state = json.loads(json.dumps(dist.get_state()))  # what a checkpoint stores
    expected = [t.task_id for t in dist.sample(12)] + [t.task_id for t in dist.sample(3, "test")]
    restored = TaskDistribution("reach", num_train=50, num_test=10, seed=4)
    restored.set_state(state)
    got = [t.task_id for t in restored.sample(12)] + [t.task_id for t in restored.sample(3, "test")]
    assert got == expected
    dist.set_state(state)  # the same object can rewind too
    assert [t.task_id for t in dist.sample(12)] == expected[:12]


def test_set_state_refuses_another_distribution():
    state = TaskDistribution("reach", num_train=50, num_test=10, seed=4).get_state()
    with pytest.raises(ValueError, match="belongs to"):
        TaskDistribution("reach", num_train=50, num_test=10, seed=5).set_state(state)


def test_unknown_split_and_bad_arguments():
    dist = TaskDistribution("reach", num_train=3, num_test=0, seed=0)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        dist.sample(1, split="val")
    with pytest.raises(ValueError, match="unknown split"):
        dist.tasks("validation")
    with pytest.raises(ValueError, match="empty"):
        dist.sample(1, split="test")
    with pytest.raises(ValueError, match="n must be"):
        dist.sample(-1)
    with pytest.raises(ValueError, match="num_train"):
        TaskDistribution("reach", num_train=0, num_test=1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        TaskDistribution("reach", num_train=1, num_test=1, seed=-1)


def test_unknown_family_lists_known_ones():
    known = ", ".join(sorted(FAMILIES))
    with pytest.raises(UnknownNameError, match=rf"unknown task family 'juggle'; known: {known}$"):
        get_family("juggle")
    with pytest.raises(ValueError, match=known):
        TaskDistribution("juggle", num_train=1, num_test=1, seed=0)


def test_families_satisfy_the_protocol():
    for name, family in FAMILIES.items():
        assert isinstance(family, TaskFamily) and family.name == name
        params = family.sample_params(np.random.default_rng(0))
        assert set(params) == set(family.param_names)


def test_task_round_trip_and_unknown_keys():
    task = Task(family="reach", task_id="reach/train/0", params={"goal": [0.5, 0.0, 0.4]})
    assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task
    assert len({task, Task.from_dict(task.to_dict())}) == 1  # hashable, usable as a dict key
    data = task.to_dict()
    data["params"]["goal"][0] = 9.0
    assert task.params["goal"][0] == 0.5  # to_dict hands out a copy
    with pytest.raises(ValueError, match="exactly keys"):
        Task.from_dict({**task.to_dict(), "robot": "kuka-0"})


def test_sampler_seed_changes_order_not_split():
    a = TaskDistribution("reach", 20, 5, seed=3, sampler_seed=0)
    b = TaskDistribution("reach", 20, 5, seed=3, sampler_seed=1)
    assert a.tasks("train") == b.tasks("train") and a.tasks("test") == b.tasks("test")
    assert [t.task_id for t in a.sample(10)] != [t.task_id for t in b.sample(10)]
