"""Every shipped config is valid, and every family's config trains end to end (`fleet train
configs/<family>.yaml`), at a tiny budget, on real pybullet, into a real MLflow store."""

from pathlib import Path

import pytest

from learner.config import load_config
from metafleet.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
FAMILY_CONFIGS = ["reach.yaml", "reach-panda.yaml", "push.yaml", "velocity.yaml", "direction.yaml",
                  "dynamics.yaml", "velocity-a1.yaml"]
TINY = ["workers.backend=local", "workers.num_workers=1", "train.iterations=1", "train.meta_batch_size=2",
        "train.episodes_per_task=2", "train.eval_tasks=2", "train.eval_episodes=2", "train.eval_steps=[0,1]",
        "train.eval_every=0", "fleet.horizon=5", "fleet.num_train_tasks=4", "fleet.num_test_tasks=2",
        "learner.hidden_sizes=[8]", "learner.ppo_epochs=1"]


def test_every_family_has_its_config():
    assert set(FAMILY_CONFIGS) <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_is_valid(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.name and cfg.train.iterations >= 1


@pytest.mark.integration
@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_family_config_trains_and_registers(name, mlflow_uri, capsys):
    args = ["train", str(ROOT / "configs" / name), *[x for item in TINY for x in ("--set", item)]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held-out tasks after meta-training" in out and "registered models:/" in out
