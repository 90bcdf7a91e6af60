"""Real faults on the training driver: SIGKILL during checkpoint writes, SIGKILL of a training job and
`fleet train --resume` into the same MLflow run, a truncated newest checkpoint on resume."""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from learner.checkpoint import NAME, TEMP_PREFIX, list_checkpoints, load_newest, save_checkpoint

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


# ---- SIGKILL while checkpoints are being written ---------------------------------------------------------
def checkpoint_state(iteration: int) -> dict:
    """1-5 MB whose content encodes the iteration, so a torn or mixed-up file is detectable."""
    numel = 250_000 + (iteration * 7919) % 1_000_000
    # numpy, not torch.full: torch's intra-op thread pool does not survive fork() (the child would hang)
    weights = torch.from_numpy(np.full(numel, iteration, dtype=np.float32))
    return {"iteration": iteration, "numel": numel, "weights": weights}


def write_checkpoints_forever(directory: str, start: int) -> None:
    iteration = start
    while True:
        save_checkpoint(directory, iteration, checkpoint_state(iteration), keep=2)
        iteration += 1


def assert_complete(directory: Path) -> int:
    found = load_newest(directory)
    assert found is not None and not found.skipped, "a complete checkpoint must always be loadable"
    assert NAME.match(found.path.name) and not found.path.name.startswith(TEMP_PREFIX)
    state = found.state
    assert found.path.name == f"ckpt-{state['iteration']:08d}.pt"
    assert state["weights"].numel() == state["numel"] == checkpoint_state(state["iteration"])["numel"]
    assert bool((state["weights"] == float(state["iteration"])).all())
    return state["iteration"]


def wait_until_saved(directory: Path, iteration: int, writer, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not (directory / f"ckpt-{iteration:08d}.pt").exists():
        assert time.monotonic() < deadline and writer.is_alive(), "the writer makes no progress"
        time.sleep(0.002)


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(20240611)
    fork = multiprocessing.get_context("fork")  # torch is already imported: the writer starts in ms
    next_iteration, torn_writes, trials = 0, 0, 24
    for _ in range(trials):
        writer = fork.Process(target=write_checkpoints_forever, args=(str(tmp_path), next_iteration), daemon=True)
        started = time.time()
        writer.start()
        wait_until_saved(tmp_path, next_iteration + 1, writer)  # two saves: the first one's clean-up is done
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        next_iteration = assert_complete(tmp_path) + 1
        temps = list(tmp_path.glob(f"{TEMP_PREFIX}*"))
        # only this kill's torn write may be left: older temp files were removed by this trial's saves
        assert len(temps) <= 1 and all(p.stat().st_mtime >= started for p in temps), temps
        torn_writes += len(temps)
    print("torn writes:", torn_writes, "of", trials)
    assert torn_writes >= 3, "the kills should land inside writes often enough to test anything"
    save_checkpoint(tmp_path, next_iteration, checkpoint_state(next_iteration), keep=2)
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))  # the next save removes what the last kill left


# ---- SIGKILL of a whole training job, then --resume ------------------------------------------------------
def fleet(args: list[str], cwd: Path, log_name: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(cwd / f"{log_name}.out", "w") as out, open(cwd / f"{log_name}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "metafleet", *args], cwd=cwd, env=env, stdout=out, stderr=err)


def wait_for_checkpoints(root: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(root.iterdir()) if root.is_dir() else []
        if len(runs) == 1 and len(list_checkpoints(runs[0])) >= count:
            return runs[0]
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    raise TimeoutError(f"no {count} checkpoints under {root}")


@pytest.mark.slow
def test_killed_job_resumes_into_the_same_run(tmp_path):
    job = fleet(["train", str(REPO / "configs/smoke.yaml"), "--set", "train.iterations=6"], tmp_path, "first")
    try:
        run_dir = wait_for_checkpoints(tmp_path / "checkpoints", 2, job)
    finally:
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
    run_id = run_dir.name
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # a SIGKILL leaves the run open
    logged_before = [m.step for m in client.get_metric_history(run_id, "pre_return")]

    newest, previous = list_checkpoints(run_dir)[:2]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated: the resume must fall back, and say so
    resume_at = int(NAME.match(previous.name).group(1))

    resumed = fleet(["train", "--resume", run_id], tmp_path, "resume")
    assert resumed.wait(timeout=240) == 0, (tmp_path / "resume.err").read_text()[-3000:]
    err = (tmp_path / "resume.err").read_text()
    relative = Path("checkpoints") / run_id  # checkpoint_dir is relative to the job's working directory
    assert (f"resumed from {relative / previous.name} at iteration {resume_at} "
            f"(skipped unreadable {relative / newest.name}") in err

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_iteration"] == str(resume_at)
    assert max(logged_before) > resume_at  # so the resume really re-did steps the killed job had logged
    for key, first in (("pre_return", 1), ("env_steps", 1), ("eval/return_step1", 0)):  # eval also at step 0
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(first, 7)), key
    assert client.get_model_version("smoke", "1").run_id == run_id
    assert (run_dir / "ckpt-00000006.pt").is_file()
