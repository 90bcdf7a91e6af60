"""Shared fixtures: one real local Ray (127.0.0.1, 2 CPUs) per session, MLflow in tmp sqlite."""

import os

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test networks are tiny: intra-op threads only fight over the shared cores (seconds -> sub-second),
    and one thread keeps in-process results bitwise comparable with a 1-CPU Ray actor's."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def telemetry_dir(tmp_path_factory, monkeypatch):
    """`fleet run` spools its telemetry here, never under the user's ~/.metafleet (created on first use)."""
    import uuid

    path = tmp_path_factory.getbasetemp() / f"telemetry-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("METAFLEET_TELEMETRY_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray bound to 127.0.0.1, shared by the session's integration tests."""
    import ray

    from workers.ray_pool import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh sqlite tracking + registry store in tmp; the CWD moves there too."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def ray_must_not_start(monkeypatch):
    """Fails the test if the code under test starts or joins Ray or builds a Ray pool — whether or not a
    session Ray (`ray_local`) is already up in this process."""
    import ray

    import workers.ray_pool

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started: bad input must fail before any Ray actor starts")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(workers.ray_pool.RayWorkerPool, "__init__", refuse)
    before = ray.is_initialized()
    yield
    assert ray.is_initialized() == before
