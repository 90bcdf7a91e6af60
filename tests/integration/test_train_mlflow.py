"""End to end through the CLI: train on real pybullet, track and register in a real MLflow
sqlite store, resume into the same run, evaluate the registered policy."""

import json

import pytest
from mlflow.tracking import MlflowClient

from metafleet.cli import main

pytestmark = pytest.mark.integration
SMOKE = "configs/smoke.yaml"


@pytest.fixture
def smoke_config(request):
    return str(request.config.rootpath / SMOKE)


def test_train_tracks_and_registers(mlflow_uri, smoke_config, capsys):
    assert main(["train", smoke_config]) == 0
    out = capsys.readouterr().out
    assert "registered models:/smoke/1" in out
    assert "return before adaptation" in out

    client = MlflowClient(mlflow_uri, mlflow_uri)
    version = client.get_model_version_by_alias("smoke", "candidate")
    for key in ("family", "algorithm", "git_commit", "eval_return_step0", "eval_return_step1", "weights_sha256"):
        assert key in version.tags, key
    assert version.tags["family"] == "reach" and version.tags["algorithm"] == "maml"

    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["learner.algorithm"] == "maml"
    for metric in ("pre_return", "post_return", "env_steps", "env_steps_per_s", "kl", "entropy",
                   "outer_loss", "eval/return_step1", "eval/success_step0_stderr"):
        assert metric in run.data.metrics, metric
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pre_return")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "tasks.json", "eval", "checkpoints", "policy"} <= artifacts
    eval_files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert eval_files >= {"eval/adaptation.png", "eval/final.json", "eval/per_task.png", "eval/tasks.json"}
    with open(client.download_artifacts(run.info.run_id, "tasks.json")) as handle:
        train_task_ids = [t["task_id"] for t in json.load(handle)["train"]]
    per_task = [k for k in run.data.metrics if k.startswith("task/") and k.endswith("/return")]
    assert sorted(per_task) == sorted(f"task/{t}/return" for t in train_task_ids[:2])  # eval_tasks: 2


def test_resume_continues_the_same_run(mlflow_uri, smoke_config, capsys, tmp_path):
    assert main(["train", smoke_config]) == 0
    client = MlflowClient(mlflow_uri, mlflow_uri)
    run_id = client.get_model_version("smoke", "1").run_id
    assert main(["train", "--resume", run_id, "--set", "train.iterations=4"]) == 0
    steps = [m.step for m in client.get_metric_history(run_id, "pre_return")]
    assert steps == [1, 2, 3, 4]  # iterations 3 and 4 continue where the checkpoint left off
    env_steps = client.get_metric_history(run_id, "env_steps")
    assert [m.value for m in env_steps] == sorted(m.value for m in env_steps)
    assert (tmp_path / "checkpoints" / run_id / "ckpt-00000004.pt").is_file()
    assert client.get_model_version("smoke", "2").run_id == run_id


def test_eval_a_registered_policy(mlflow_uri, smoke_config, capfd):
    """capfd: pybullet's C-level prints must not leak into the JSON on file descriptor 1."""
    assert main(["train", smoke_config]) == 0
    capfd.readouterr()
    code = main(["eval", "models:/smoke@candidate", "--backend", "local", "--tasks", "2", "--episodes", "2",
                 "--steps", "0,1", "--json"])
    assert code == 0
    result = json.loads(capfd.readouterr().out)
    assert result["steps"] == [0, 1] and len(result["task_ids"]) == 2
    assert all(t.startswith("reach/test/") for t in result["task_ids"])
    assert set(result["summary"]["1"]) == {"return_mean", "return_stderr", "success_mean", "success_stderr"}


def test_single_task_baseline_logs_per_task_returns_and_registers_nothing(mlflow_uri, smoke_config, capsys):
    assert main(["train", smoke_config, "--set", "learner.algorithm=single_task"]) == 0
    assert "nothing registered" in capsys.readouterr().out
    client = MlflowClient(mlflow_uri, mlflow_uri)
    assert not client.search_registered_models()
    [run] = client.search_runs([client.get_experiment_by_name("metafleet").experiment_id])
    assert run.info.status == "FINISHED"
    assert sum(k.startswith("task/") and k.endswith("/return") for k in run.data.metrics) == 2


def test_every_final_evaluation_can_carry_the_oracle_and_belief_carries_its_own(mlflow_uri, smoke_config, capsys):
    """`train.oracle: true` trains MT-PPO given the true params on the run's env-step budget for a learner without
    an oracle (MAML); the belief learner's oracle is its own actor given the true params. Both end up as a baseline
    row of the printed table and of eval/final.json, with the fraction-of-oracle column."""
    client = MlflowClient(mlflow_uri, mlflow_uri)
    for overrides, name in ((["--set", "train.oracle=true"], "smoke"),
                            (["--set", "learner.algorithm=belief", "--set", "tracking.registered_model=smoke-belief",
                              "--set", "learner.model_steps=5"], "smoke-belief")):
        assert main(["train", smoke_config, *overrides]) == 0
        out = capsys.readouterr().out
        assert "of oracle" in out and "\noracle " in out and "\nfrom-scratch " in out, out
        run_id = client.get_model_version_by_alias(name, "candidate").run_id
        with open(client.download_artifacts(run_id, "eval/final.json")) as handle:
            final = json.load(handle)
        assert set(final["baselines"]) == {"from-scratch", "oracle"}
        assert final["baselines"]["oracle"]["steps"] == final["steps"]
    metrics = client.get_run(client.get_model_version_by_alias("smoke", "candidate").run_id).data.metrics
    assert metrics["oracle/env_steps"] >= metrics["env_steps"]  # whole iterations: at least the run's budget
