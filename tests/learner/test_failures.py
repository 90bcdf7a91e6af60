"""A learner's numerical failure is named (algorithm, where, tasks and family, cause), reaches the user as a
`fleet: error` with exit 1, and leaves the MLflow run FAILED — not a raw traceback."""

from pathlib import Path

from mlflow.tracking import MlflowClient

from learner.maml import MAML
from metafleet.cli import main

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")


def singular(self, support, query):
    raise RuntimeError("torch.linalg.solve: The solver failed because the input matrix is singular.")


def test_a_failing_update_is_named_and_the_run_failed(mlflow_uri, monkeypatch, capsys):
    monkeypatch.setattr(MAML, "learn", singular)
    code = main(["train", SMOKE, "--set", "train.eval_every=0"])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert ("fleet: error: training failed (MLflow run marked FAILED): maml update at iteration 0 failed on tasks "
            "of family reach (reach/train/") in err
    assert err.rstrip().endswith("RuntimeError: torch.linalg.solve: The solver failed because the input matrix is "
                                 "singular.")
    assert "Traceback" not in err
    client = MlflowClient(mlflow_uri, mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("metafleet").experiment_id])
    assert run.info.status == "FAILED"


def test_a_failing_evaluation_is_named_too(mlflow_uri, monkeypatch, capsys):
    def broken_adapt(self, *args, **kwargs):
        raise ValueError("non-finite advantages")

    monkeypatch.setattr(MAML, "adapt", broken_adapt)
    code = main(["train", SMOKE])  # eval_every 1: the held-out evaluation before training adapts first
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert "maml held-out evaluation after iteration 0 failed on tasks of family reach" in err
    assert err.rstrip().endswith("ValueError: non-finite advantages")
