"""SIGINT / SIGTERM on a real `fleet train` subprocess: the iteration in progress finishes, its checkpoint is
written, the MLflow run is marked KILLED, the exact resume command is printed, the exit code is 130 / 143 with
no stack dump; `fleet train --resume RUN_ID` then continues into the same run."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from learner.checkpoint import list_checkpoints

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ITERATIONS = 40  # far more than the test waits for: the stop, not the end, finishes the first job


def fleet(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "metafleet", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_iteration(job: subprocess.Popen, timeout: float = 180) -> None:
    """Read the job's progress lines (`iter 1/40 | ...` off a TTY) until one iteration is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = job.stdout.readline()
        assert line or job.poll() is None, job.communicate()[1][-3000:]
        if line.startswith("iter 1/"):
            return
    raise TimeoutError("no iteration finished")


def stop_and_check(tmp_path: Path, signum: int, backend: str) -> tuple[str, int]:
    """Start training, send `signum` after the first checkpoint; check the stop; return (run id, iteration)."""
    job = fleet(["train", str(REPO / "configs/smoke.yaml"), "--set", f"train.iterations={ITERATIONS}",
                 "--set", "train.checkpoint_every=1000", "--set", f"workers.backend={backend}"], tmp_path)
    try:
        wait_for_iteration(job)
        job.send_signal(signum)
        _, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "*** SIGTERM received at" not in err, err[-3000:]  # Ray's C++ stack dump
    match = re.search(r"fleet train --resume ([0-9a-f]{32})", err)
    assert match, err[-3000:]
    run_id = match.group(1)
    stopped = re.search(r"checkpoint of iteration (\d+) saved", err)
    assert stopped and 1 <= int(stopped.group(1)) < ITERATIONS, err[-3000:]
    iteration = int(stopped.group(1))
    run_dir = tmp_path / "checkpoints" / run_id
    assert list_checkpoints(run_dir)[0].name == f"ckpt-{iteration:08d}.pt"  # the last finished one
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert MlflowClient(uri, uri).get_run(run_id).info.status == "KILLED"
    return run_id, iteration


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_stops_cleanly_and_resume_continues_the_same_run(tmp_path, signum):
    run_id, iteration = stop_and_check(tmp_path, signum, "local")
    resumed = fleet(["train", "--resume", run_id, "--set", "train.iterations=" + str(iteration + 1)], tmp_path)
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from checkpoints/{run_id}/ckpt-{iteration:08d}.pt at iteration {iteration}" in err
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "env_steps")][-1] == iteration + 1


@pytest.mark.slow
def test_sigterm_on_a_ray_driver_stops_cleanly_without_a_stack_dump(tmp_path):
    stop_and_check(tmp_path, signal.SIGTERM, "ray")
