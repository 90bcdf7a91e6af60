"""Smoke test of benchmarks/throughput.py: it runs end to end and reports; no timing is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_prints_ratios_and_writes_json(tmp_path):
    out = tmp_path / "throughput.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray, not a cluster
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("ratio LocalWorkerPool(1) / plain:", "ratio RayWorkerPool(1) / plain:",
                 "ratio RayWorkerPool(2) / plain:", "per core used RayWorkerPool(1):",
                 "per core used RayWorkerPool(2):", "| RayWorkerPool(2) | 2 |"):
        assert line in proc.stdout
    data = json.loads(out.read_text())
    assert set(data["modes"]) == {"plain-1", "local-1", "ray-1", "plain-2", "ray-2"}
    for mode in data["modes"].values():
        assert len(mode["steps_per_s"]) == data["config"]["repeats"]
        assert mode["min"] <= mode["mean"] <= mode["max"] and mode["min"] > 0
        assert mode["identical_to_plain"] in (None, True)  # same seeds -> same batches in every mode
    assert data["reference"]["raw_step_simulation_per_s"] > 0
