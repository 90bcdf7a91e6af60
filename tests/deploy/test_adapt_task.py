"""Which task `fleet adapt` adapts to, and the sim-robot defaults taken from a policy's manifest."""

import pytest

from deploy.adapt import adaptation_task
from deploy.connect import _parse_sim, with_sim_defaults
from learner.config import load_config

MIXTURE = {"fleet": {"family": {"velocity": 1.0, "direction": 1.0}, "robot": "half_cheetah",
                     "robot_id": "cheetah-0", "num_train_tasks": 6, "num_test_tasks": 4}}


def test_default_task_is_the_first_held_out_one_with_its_own_family():
    cfg = load_config(data=MIXTURE)
    task = adaptation_task(cfg, None, "cheetah-7")
    assert task.family in ("velocity", "direction") and task.task_id == "cheetah-7/adapt"


def test_mixture_needs_the_family_named_and_checks_it():
    cfg = load_config(data=MIXTURE)
    with pytest.raises(ValueError, match=r"pass --task family=NAME"):
        adaptation_task(cfg, {"direction": 1}, "c")
    with pytest.raises(ValueError, match=r"got 'reach'"):
        adaptation_task(cfg, {"family": "reach", "goal": [0.5, 0, 0.4]}, "c")
    task = adaptation_task(cfg, {"family": "direction", "direction": -1, "variant": 0.5}, "c")
    assert task.family == "direction" and task.params == {"direction": -1, "variant": 0.5}


def test_single_family_takes_params_as_they_are():
    cfg = load_config(data={})
    task = adaptation_task(cfg, {"goal": [0.6, 0.1, 0.35]}, "kuka-1")
    assert task.family == "reach" and task.params == {"goal": [0.6, 0.1, 0.35]}


def test_sim_defaults_fill_only_what_the_address_leaves_out():
    assert with_sim_defaults("sim:c-1", family="velocity", model="half_cheetah") == \
        "sim:c-1?family=velocity&model=half_cheetah"
    assert with_sim_defaults("sim:c-1?model=a1&horizon=20", family="velocity", model="half_cheetah") == \
        "sim:c-1?model=a1&horizon=20&family=velocity"
    assert with_sim_defaults("tcp://127.0.0.1:5000", family="velocity") == "tcp://127.0.0.1:5000"
    parsed = _parse_sim(with_sim_defaults("sim:c-1", family="velocity", model="half_cheetah"))
    assert parsed["family"] == "velocity" and parsed["robot"].model == "half_cheetah"
