"""A real Ray cluster and the commands users run against it (see docs/cluster.md).

`test_smoke_training_as_ray_job` starts a head with `ray start --head --block` (everything on
127.0.0.1, its own temp dir, its own auth token), submits the smoke training with
`ray job submit --working-dir <repo>` and checks the job log, the uploaded package and the model
registered in a tmp sqlite store.

Why not `ray stop`: it kills every Ray process of this user on the machine, including the
session-wide in-process Ray of the other tests (`tests/conftest.py::ray_local`) and anyone
else's cluster. The head instead runs with `--block` in a process group of its own; SIGTERM makes
it tear down the processes it started, and the group is SIGKILLed if anything is left.

Why `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: `ray start` replaces `--node-ip-address=127.0.0.1`
with the machine's routable IP and binds GCS/raylet gRPC on all interfaces; this single-node
switch (what Ray does on macOS) keeps the node IP and every listener on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fakes import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 300
HEAD_START_TIMEOUT_S = 180
# Generated or heavy paths (all in .gitignore) that must never reach the cluster.
NEVER_UPLOADED = (".git", "mlflow.db", "mlruns", "mlartifacts", "metafleet.egg-info", ".pytest_cache",
                  ".ruff_cache", ".venv", "runs", "out")


def _ray_cli() -> str:
    """The `ray` script of this interpreter (the same Ray the other tests import)."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray") or "ray"


@dataclass
class LocalCluster:
    dashboard_url: str
    client_env: dict[str, str]
    temp_dir: Path
    log_path: Path

    def ray(self, *args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a `ray ...` CLI command as a user would, with this cluster's token."""
        return subprocess.run([_ray_cli(), *args], env=self.client_env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def head_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _wait_for_dashboard(url: str, token: str, head: subprocess.Popen, log_path: Path) -> None:
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"`ray start --head` exited with {head.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"dashboard {url} not up after {HEAD_START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")


def _stop_head(head: subprocess.Popen) -> None:
    """SIGTERM the blocking `ray start` (it kills what it started); then SIGKILL its group's leftovers."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)  # the group is ours: start_new_session=True
    head.wait(timeout=30)


@pytest.fixture
def ray_cluster(tmp_path):
    """A private single-node Ray cluster started with the `ray start` CLI, bound to 127.0.0.1."""
    gcs, dashboard, client, agent_http, agent_grpc, metrics, env_agent, node_mgr, obj_mgr = free_ports(9)
    # Short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp" if os.path.isdir("/tmp") else None))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    head_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log_path = tmp_path / "ray-head.log"
    command = [
        _ray_cli(), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus=2",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={env_agent}", f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}",
    ]
    with open(log_path, "w") as log:
        head = subprocess.Popen(command, env=head_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(url, token, head, log_path)
        yield LocalCluster(url, env, temp_dir, log_path)
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(cluster: LocalCluster, entrypoint: list[str], runtime_env: dict, cwd: Path) -> str:
    """`ray job submit` (waits and tails the log); retried only if the job never got submitted,
    e.g. the head's job agent was still starting."""
    for attempt in range(3):
        submission_id = f"metafleet-test-{secrets.token_hex(4)}"
        try:
            done = cluster.ray("job", "submit", "--address", cluster.dashboard_url, "--submission-id", submission_id,
                               "--working-dir", str(REPO_ROOT), "--runtime-env-json", json.dumps(runtime_env),
                               "--", *entrypoint, timeout=JOB_TIMEOUT_S, cwd=cwd)
        except subprocess.TimeoutExpired:
            cluster.ray("job", "stop", "--address", cluster.dashboard_url, submission_id)
            pytest.fail(f"job {submission_id} did not finish in {JOB_TIMEOUT_S}s")
        output = _plain(done.stdout + done.stderr)
        if "submitted successfully" in output:
            assert done.returncode == 0, f"job failed:\n{output[-6000:]}\nhead:\n{cluster.head_log()}"
            return submission_id
        time.sleep(5 * (attempt + 1))
    pytest.fail(f"`ray job submit` never submitted the job:\n{output[-4000:]}\nhead:\n{cluster.head_log()}")


def _plain(text: str) -> str:
    """CLI output without colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _uploaded_package(temp_dir: Path) -> Path:
    packages = [p for p in temp_dir.glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*") if p.is_dir()]
    assert len(packages) == 1, f"expected one unpacked working_dir package, found {packages}"
    return packages[0]


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_training_as_ray_job(ray_cluster, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from learner.config import load_config

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # With a sqlite URI the artifacts would go to ./mlruns of the job's working dir, a copy inside
    # Ray's temp dir that dies with the cluster; an experiment created here keeps them in tmp.
    experiment = load_config(str(REPO_ROOT / "configs/smoke.yaml")).tracking.experiment
    MlflowClient(uri).create_experiment(experiment, artifact_location=(tmp_path / "artifacts").as_uri())

    entrypoint = ["python", "-m", "metafleet", "train", "configs/smoke.yaml",
                  "--set", "workers.backend=ray", "--set", "workers.num_workers=1"]
    submission_id = _submit(ray_cluster, entrypoint, {"env_vars": {"MLFLOW_TRACKING_URI": uri}}, tmp_path)

    status = ray_cluster.ray("job", "status", "--address", ray_cluster.dashboard_url, submission_id)
    assert f"Job '{submission_id}' succeeded" in _plain(status.stdout + status.stderr)
    logs = ray_cluster.ray("job", "logs", "--address", ray_cluster.dashboard_url, submission_id)
    assert logs.returncode == 0, logs.stderr
    assert "registered models:/smoke/1" in logs.stdout, logs.stdout[-4000:]
    assert "ray workers=1" in logs.stdout
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", logs.stdout).group(1)

    client = MlflowClient(uri, uri)
    version = client.get_model_version("smoke", "1")
    assert version.status == "READY" and version.run_id == run_id
    assert str(client.get_model_version_by_alias("smoke", "candidate").version) == "1"
    assert version.tags.get("weights_sha256")
    assert client.get_run(run_id).info.status == "FINISHED"
    assert str(tmp_path / "artifacts") in version.source  # not in Ray's temp copy of the repo
    pulled = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(tmp_path / "pulled")))
    assert (pulled / "manifest.json").is_file() and (pulled / "weights.safetensors").is_file()

    # The upload honours .gitignore (and Ray's default excludes): no DB, no checkpoints of
    # earlier local runs, no VCS or build debris. checkpoints/ may hold only this job's run.
    package = _uploaded_package(ray_cluster.temp_dir)
    assert (package / "metafleet" / "cli.py").is_file() and (package / "configs" / "smoke.yaml").is_file()
    assert (package / "policy" / "__init__.py").is_file()  # the numpy policy package, not a pulled policy dir
    leaked = [name for name in NEVER_UPLOADED if (package / name).exists()]
    assert not leaked, f"uploaded to the cluster: {leaked}"
    assert sorted(p.name for p in (package / "checkpoints").iterdir()) == [run_id]


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_cluster_launcher_configs_validate(name):
    """cluster/*.yaml pass the launcher's own offline preparation and JSON-schema validation."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(REPO_ROOT / "cluster" / name) as handle:
        config = yaml.safe_load(handle)
    assert {"cluster_name", "provider", "auth"} <= config.keys()
    prepared = prepare_config(config)
    validate_config(prepared)
    if config["provider"]["type"] == "local":
        assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    else:
        assert prepared["head_node_type"] in prepared["available_node_types"]
        assert any(t.get("resources", {}).get("GPU") for t in prepared["available_node_types"].values())
