"""`benchmarks/robot_exams.py --sweep`: an exam's seeds run as one `fleet sweep` (Ray Tune trials, a real local Ray
and MLflow store) and land in the exam JSON the report renders, with every model's rows, each held-out task's robot
and the trial's MLflow run. Tiny budget: nothing about learning is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["workers.backend=local", "workers.num_workers=1", "fleet.num_train_tasks=8", "fleet.num_test_tasks=4",
        "fleet.horizon=10", "learner.hidden_sizes=[16]", "learner.ppo_epochs=1", "learner.device=cpu",
        "train.iterations=2", "train.meta_batch_size=2", "train.episodes_per_task=1", "train.eval_tasks=2",
        "train.eval_episodes=1", "train.eval_steps=[0,1]", "train.checkpoint_every=2", "learner.rma.latent=2",
        "learner.rma.history=3", "learner.rma.adapt_from=1", "learner.rma.adapt_steps=5",
        "learner.rma.adapt_batch=64", "learner.rma.adapt_sizes=[16]", "learner.rma.encoder_sizes=[8]"]


@pytest.mark.slow
@pytest.mark.integration
def test_the_arm_exam_seeds_run_as_one_sweep_and_render(tmp_path):
    out = tmp_path / "exams.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, str(ROOT / "benchmarks" / "robot_exams.py"), "--exams", "arm", "--seeds", "0", "1",
               "--sweep", "--out", str(out), *[x for item in TINY for x in ("--set", item)]]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [(r["exam"], r["seed"], r["method"]) for r in runs] == [("arm", 0, "rma"), ("arm", 1, "rma")]
    assert set(runs[0]["models"]) == {"rma", "oracle", "robot-agnostic", "from-scratch"}
    assert all(robot.startswith("kuka-new-") for robot in runs[0]["robots"])
    assert runs[0]["mlflow_run_id"] != runs[1]["mlflow_run_id"]

    sys.path.insert(0, str(ROOT))
    from benchmarks.robot_exams_report import render_robot_exams

    text = "\n".join(render_robot_exams(json.loads(out.read_text())))
    assert "seeds 0, 1" in text and "| rma | 0 |" in text and "validity" in text
