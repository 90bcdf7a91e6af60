"""Several jobs registering versions of one model at once: unique versions, nothing lost."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

PUBLISHER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    import mlflow
    from policy.artifact import PolicyArtifact
    from deploy.registry import Registry
    from tests.fakes import make_policy_dir

    uri, who = sys.argv[1], sys.argv[2]
    artifact = PolicyArtifact.load(make_policy_dir(sys.argv[3]))
    registry = Registry(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("concurrent")
    for i in range(3):
        with mlflow.start_run() as run:
            print(registry.publish("shared-model", artifact, run.info.run_id, {{"who": who, "i": i}}), flush=True)
""")


def test_concurrent_publishers_get_unique_versions(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    subprocess.run([sys.executable, "-c", "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
                    "mlflow.set_experiment('concurrent')", uri], check=True, capture_output=True)
    script = PUBLISHER.format(root=str(ROOT))
    jobs = [subprocess.Popen([sys.executable, "-c", script, uri, str(w), str(tmp_path / f"p{w}")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(4)]
    printed = []
    for job in jobs:
        out, err = job.communicate(timeout=180)
        assert job.returncode == 0, err
        printed += out.split()
    assert sorted(printed, key=int) == [str(v) for v in range(1, 13)]
    client = MlflowClient(uri, uri)
    seen = {(v.tags["who"], v.tags["i"]) for v in client.search_model_versions("name='shared-model'")}
    assert seen == {(str(w), str(i)) for w in range(4) for i in range(3)}
