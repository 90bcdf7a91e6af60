"""Learner settings that cannot work together fail at config time, naming the keys."""

from pathlib import Path

import pytest

from learner.config import ConfigError, load_config

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


@pytest.mark.parametrize(("overrides", "expected"), [
    (["learner.conditioning=film"], "conditioning 'film' applies to algorithm 'mtppo' only"),
    (["learner.algorithm=reptile", "learner.pcgrad=true"], "pcgrad applies to algorithm 'mtppo' only"),
    (["learner.algorithm=rl2", "learner.trial_episodes=1"], "rl2 needs trial_episodes >= 2"),
    (["learner.algorithm=rl2", "learner.trial_episodes=2", "train.episodes_per_task=3"],
     "train.episodes_per_task (3) must be a multiple of learner.trial_episodes (2) for rl2"),
    (["learner.task_weights={reach: 0}"], "task_weights['reach'] must be > 0"),
    (["learner.algorithm=bogus"], "learner.algorithm"),
    (["learner.algorithm=reptile", "learner.inner_rates=per_step"],
     "inner_rates 'per_step' applies to algorithm 'maml'"),
])
def test_inconsistent_learner_settings_are_refused(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, overrides)
    assert expected in str(info.value)


def test_consistent_settings_pass():
    cfg = load_config(SMOKE, ["learner.algorithm=mtppo", "learner.conditioning=film",
                                             "learner.pcgrad=true"])
    assert cfg.learner.conditioning == "film" and cfg.learner.pcgrad
