"""A registered smoke meta-policy in a private MLflow sqlite store, shared by the deploy tests."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory):
    """Train configs/smoke.yaml twice (versions 1 and 2 of `smoke`); yield the store's URI."""
    from metafleet.cli import main

    home = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{home}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["train", str(ROOT / "configs/smoke.yaml")]) == 0
        assert main(["train", str(ROOT / "configs/smoke.yaml"), "--set", "train.seed=1"]) == 0
        yield uri


@pytest.fixture
def store(registry_store, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry_store)
    monkeypatch.chdir(tmp_path)
    return registry_store


def source_dir(uri: str, name: str, version: str) -> Path:
    """Where the registry keeps a version's files (a local path with the sqlite default)."""
    from mlflow.tracking import MlflowClient

    source = MlflowClient(uri, uri).get_model_version(name, version).source
    assert os.path.isdir(source), source
    return Path(source)
