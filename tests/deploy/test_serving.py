"""`runs:/<run>/policy`: the registered version's MLflow model (metafleet's loader_module), never pickled."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from policy import NumpyGaussianPolicy
from policy.artifact import PolicyArtifact
from tests.deploy.conftest import source_dir


def serving_uri(store: str) -> str:
    run_id = MlflowClient(store, store).get_model_version("smoke", "1").run_id
    return f"runs:/{run_id}/policy"


def test_pyfunc_predicts_the_policy_mean(store):
    import mlflow

    model = mlflow.pyfunc.load_model(serving_uri(store))  # server side only; robots never do this
    obs = np.random.default_rng(0).normal(size=(4, 20)).astype(np.float32)
    expected = NumpyGaussianPolicy(PolicyArtifact.load(source_dir(store, "smoke", "1")).weights).mean(obs)
    np.testing.assert_allclose(model.predict(obs), expected, rtol=1e-6)


def test_no_pickle_in_the_logged_model(store):
    import mlflow

    local = mlflow.artifacts.download_artifacts(serving_uri(store))
    files = [os.path.join(d, f) for d, _, fs in os.walk(local) for f in fs]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle", ".py"))]  # nothing to execute
    with open(os.path.join(local, "MLmodel")) as mlmodel:
        assert "loader_module: deploy.mlflow_model" in mlmodel.read()  # code installed with metafleet


@pytest.mark.slow
def test_mlflow_models_serve_on_loopback(store, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", serving_uri(store), "--env-manager", "local",
           "--host", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        body = json.dumps({"inputs": [[0.0] * 20]}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    predictions = json.load(response)["predictions"]
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow models serve did not come up"
                time.sleep(1)
        assert np.asarray(predictions).shape == (1, 3)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
