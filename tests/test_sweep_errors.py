"""`fleet sweep` bad input: every mistake exits 2 naming the key, value or resource, before any trial starts (and,
for everything but the cluster's resources, before Ray starts)."""

from pathlib import Path

import pytest

from deploy.sweep import SweepError, check_fits, parse_grid, parse_sample, plan_sweep, trial_bundles
from learner.config import ConfigError, load_config
from metafleet.cli import main

ROOT = Path(__file__).resolve().parents[1]
REACH = str(ROOT / "configs" / "reach.yaml")


@pytest.mark.parametrize(("args", "expected"), [
    (["--grid", "learner.algoritm=belief,maml"], ["learner.algoritm", "seed=0"]),  # unknown key
    (["--grid", "train.iterations=ten,20"], ["train.iterations", "ten"]),  # wrong type
    (["--grid", "learner.algorithm=belief,sarsa"], ["learner.algorithm", "sarsa"]),  # not a choice
    (["--grid", "learner.algorithm="], ["empty value"]),
    (["--grid", "learner.algorithm=belief,,maml"], ["empty value"]),
    (["--grid", "=belief"], ["expected KEY=V1,V2"]),
    (["--grid", "learner.algorithm=belief,belief"], ["repeats a value"]),
    (["--grid", "train.seed=0,1"], ["--seeds"]),
    (["--seeds", "0", "--grid", "learner.algorithm=belief,maml"], ["--seeds must be >= 1"]),
    ([], ["empty sweep"]),
    (["--sample", "learner.outer_lr=loguniform:0,1e-2", "--trials", "2"], ["LO > 0"]),
    (["--sample", "learner.outer_lr=normal:1,2", "--trials", "2"], ["uniform, loguniform, randint"]),
    (["--sample", "learner.outer_lr=uniform:1e-3,1e-2"], ["--trials"]),
    (["--sample", "learner.outr_lr=uniform:1e-3,1e-2", "--trials", "2"], ["learner.outr_lr"]),
    (["--trials", "3", "--seeds", "2"], ["--trials goes with --sample"]),
    (["--name", "a/b", "--seeds", "2"], ["sweep name"]),
])
@pytest.mark.usefixtures("ray_must_not_start")
def test_bad_sweep_exits_2_before_anything_starts(tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert main(["sweep", REACH, *args]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.usefixtures("ray_must_not_start")
def test_resume_of_an_unknown_sweep_names_the_ones_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps" / "old-one").mkdir(parents=True)
    (tmp_path / "sweeps" / "old-one" / "sweep.json").write_text("{}")
    assert main(["sweep", "--resume", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no sweep 'nope'" in err and "old-one" in err
    assert main(["sweep", "--resume", "old-one", "--grid", "a=1,2"]) == 2
    assert "--resume NAME takes the sweep as it was planned" in capsys.readouterr().err


def test_the_grid_is_the_product_times_the_seeds_each_trial_validated():
    plan = plan_sweep(REACH, parse_grid(["learner.algorithm=belief,mtppo", "train.iterations=2,3"]), seeds=2)
    assert len(plan.trials) == 8
    assert plan.trials[0].key == "learner.algorithm=belief train.iterations=2 seed=0"
    assert plan.trials[0].overrides == ("learner.algorithm=belief", "train.iterations=2", "train.seed=0")
    assert len({t.key for t in plan.trials}) == 8
    cfg = load_config(data=plan.configs[plan.trials[-1].key])
    assert (cfg.learner.algorithm, cfg.train.iterations, cfg.train.seed) == ("mtppo", 3, 1)


def test_random_search_draws_reproducible_points_within_bounds():
    sample = parse_sample(["learner.outer_lr=loguniform:1e-4,1e-2", "train.iterations=randint:2,5"])
    a = plan_sweep(REACH, sample=sample, trials=5, sample_seed=3)
    b = plan_sweep(REACH, sample=sample, trials=5, sample_seed=3)
    assert [t.point for t in a.trials] == [t.point for t in b.trials]
    for t in a.trials:
        assert 1e-4 <= float(t.point["learner.outer_lr"]) <= 1e-2
        assert int(t.point["train.iterations"]) in (2, 3, 4)
    assert plan_sweep(REACH, sample=sample, trials=5, sample_seed=4).trials[0].point != a.trials[0].point


def test_a_trial_reserves_its_run_and_its_ray_workers_and_the_gpu_when_the_cluster_has_one():
    cfg = load_config(REACH, ["workers.backend=ray", "workers.num_workers=3"])
    assert trial_bundles(cfg, cluster_gpus=0) == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert trial_bundles(cfg, cluster_gpus=2)[0] == {"CPU": 1.0, "GPU": 1.0}
    local = load_config(REACH, ["workers.backend=local", "workers.num_workers=3"])
    assert trial_bundles(local, cluster_gpus=0) == [{"CPU": 1.0}]
    cpu_only = load_config(REACH, ["learner.device=cpu"])
    assert "GPU" not in trial_bundles(cpu_only, cluster_gpus=1)[0]


def test_a_trial_that_does_not_fit_the_cluster_names_the_resource():
    plan = plan_sweep(REACH, parse_grid(["workers.num_workers=2,8"]), overrides=["workers.backend=ray"])
    assert len(check_fits(plan, {"CPU": 16.0})) == 2
    with pytest.raises(SweepError, match=r"workers.num_workers=8 seed=0.*needs 9 CPU.*cluster has 4"):
        check_fits(plan, {"CPU": 4.0})


def test_a_bad_trial_config_names_the_trial():
    with pytest.raises(ConfigError, match=r"(?s)sweep trial 'train.iterations=0 seed=0'.*train.iterations"):
        plan_sweep(REACH, parse_grid(["train.iterations=0,2"]))
