"""Smoke test of benchmarks/soak.py --quick: real Ray workers are killed with SIGKILL during training, and
no env step may be lost or counted twice. Those are correctness properties; no timing is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "soak.py"


@pytest.mark.slow
@pytest.mark.integration
def test_quick_soak_kills_workers_and_loses_nothing(tmp_path):
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    config = ROOT / "configs" / "reach-maml.yaml"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--config", str(config), "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| **env steps lost** |" in proc.stdout and "throughput ratio soak / baseline:" in proc.stdout
    data = json.loads(out.read_text())
    summary = data["summary"]
    for key in ("kills", "env_steps_lost", "double_counted_batches", "double_counted_episodes", "duplicates_dropped",
                "restarts", "reissued_requests", "iterations", "throughput_ratio"):
        assert key in summary, key
    soak, base = data["soak"], data["baseline"]
    assert summary["kills"] >= 1 and len(soak["kills"]) == summary["kills"]
    assert soak["killer_errors"] == []
    assert summary["env_steps_lost"] == 0 and base["env_steps_lost"] == 0
    assert summary["double_counted_batches"] == 0 and base["accounting"]["double_counted_batches"] == 0
    assert soak["accounting"]["bad_batches"] == 0 and soak["accounting"]["failed_calls"] == 0
    assert soak["accounting"]["steps_expected"] == soak["trainer_env_steps"] > 0
    assert summary["restarts"] >= 1  # the pool saw at least one of the deaths
    assert soak["iterations"] >= 1 and base["iterations"] >= 1 and summary["throughput_ratio"] > 0
    assert not base["kills"] and base["pool"]["restarts"] == 0
