"""`fleet sweep` end to end, as a user runs it: a real `fleet` process, its own local Ray (127.0.0.1), Ray Tune trials,
a real MLflow sqlite store. A sweep of 2 learners x 2 seeds at a tiny budget leaves 4 FINISHED child runs under one
parent and one results JSON; a sweep stopped by a real SIGTERM resumes without re-running a finished trial and ends
with the figures of an uninterrupted sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REACH = str(ROOT / "configs" / "reach.yaml")
TINY = ["workers.backend=local", "workers.num_workers=1", "train.meta_batch_size=2", "train.episodes_per_task=2",
        "train.eval_tasks=2", "train.eval_episodes=2", "train.eval_steps=[0,1]", "train.eval_every=0",
        "fleet.horizon=5", "fleet.num_train_tasks=4", "fleet.num_test_tasks=2", "learner.hidden_sizes=[8]",
        "learner.ppo_epochs=1", "learner.model_steps=5"]
GRID = ["--grid", "learner.algorithm=belief,mtppo", "--seeds", "2"]
TIMING = ("run_id", "wall_seconds", "train_seconds")

pytestmark = pytest.mark.integration


def fleet(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "metafleet", *args]


def environment(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", PYTHONPATH=str(ROOT))
    return env


def sweep_args(name: str, iterations: int, out: Path) -> list[str]:
    sets = [x for item in [*TINY, f"train.iterations={iterations}", "train.checkpoint_every=2"]
            for x in ("--set", item)]
    return ["sweep", REACH, *GRID, *sets, "--name", name, "--out", str(out)]


def children(uri: str, parent: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("metafleet")
    return client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")


def figures(path: Path) -> list[dict]:
    """The results' trials without what differs between two runs of the same sweep (ids, times)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in json.loads(path.read_text())["trials"]]


def test_a_sweep_of_two_learners_by_two_seeds_leaves_four_child_runs_and_one_json(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(fleet(tmp_path, *sweep_args("two-by-two", 2, out)), cwd=tmp_path,
                          env=environment(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sweep two-by-two: 4/4 done, 0 running, 0 pending; best heldout_success" in done.stdout
    results = json.loads(out.read_text())
    assert sorted(r["key"] for r in results["trials"]) == [
        "learner.algorithm=belief seed=0", "learner.algorithm=belief seed=1",
        "learner.algorithm=mtppo seed=0", "learner.algorithm=mtppo seed=1"]
    assert [s["point"] for s in results["summary"]] == [{"learner.algorithm": "belief"},
                                                        {"learner.algorithm": "mtppo"}]
    assert all(s["seeds"] == [0, 1] for s in results["summary"])
    assert "oracle" in results["summary"][0]["baselines"]  # the belief rows carry their yardsticks

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.get_run(results["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "sweep"
    assert parent.data.params["grid.learner.algorithm"] == "belief,mtppo"
    runs = children(uri, parent.info.run_id)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["sweep_trial"] for r in runs} == {r["key"] for r in results["trials"]}
    assert {r.info.run_id for r in runs} == {r["run_id"] for r in results["trials"]}
    for run in runs:  # each child is a full training run: its resolved config and held-out table
        assert run.data.params["train.seed"] in ("0", "1")
        assert "eval/success_step1" in run.data.metrics
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/results.json", "sweep/table.md", "sweep/plan.json"} <= names


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    env, out = environment(tmp_path), tmp_path / "resumed.json"
    proc = subprocess.Popen(fleet(tmp_path, *sweep_args("stopped", 8, out)), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:  # stop it once the first trial has finished, while others run
        lines.append(line)
        if "sweep stopped: 1/4 done" in line or time.monotonic() > deadline:
            break
    assert any("sweep stopped: 1/4 done" in line for line in lines), "".join(lines)[-3000:]
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, "".join(lines)[-2000:] + rest[-3000:]
    assert "fleet sweep --resume stopped" in rest

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    state = json.loads((tmp_path / "sweeps" / "stopped" / "sweep.json").read_text())
    before = {r.data.tags["sweep_trial"]: r.info.run_id for r in children(uri, state["parent_run_id"])
              if r.info.status == "FINISHED"}
    assert 1 <= len(before) < 4

    resumed = subprocess.run(fleet(tmp_path, "sweep", "--resume", "stopped", "--out", str(out)), cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    records = {r["key"]: r for r in json.loads(out.read_text())["trials"]}
    assert len(records) == 4
    for key, run_id in before.items():  # a finished trial is not re-run: its one run stands
        assert records[key]["run_id"] == run_id
        assert [r.info.run_id for r in children(uri, state["parent_run_id"])
                if r.data.tags["sweep_trial"] == key] == [run_id]
    finished = [r for r in children(uri, state["parent_run_id"]) if r.info.status == "FINISHED"]
    assert len(finished) == 4
    assert any("resumed_from_iteration" in r.data.tags for r in finished), "no trial resumed from its checkpoint"

    reference = tmp_path / "reference.json"
    plain = subprocess.run(fleet(tmp_path, *sweep_args("reference", 8, reference)), cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert figures(out) == figures(reference)
