"""Smoke test of benchmarks/scaling.py: worker sweep, Ray nodes and a node loss run end to end; no timing is
asserted (the loss-within-share verdict is reported, not checked, at these sizes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scaling.py"


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_sweeps_workers_and_survives_a_node_loss(tmp_path):
    out = tmp_path / "scaling.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = data["workers"]["rows"]
    assert set(rows) == {"1", "2"} and rows["1"]["per_worker"] == pytest.approx(1.0)
    assert all(len(r["steps_per_s"]) == data["config"]["rounds"] for r in rows.values())
    c = data["cluster"]
    steps = c["before"]["iterations"][0]["env_steps"]
    # no experience is lost around the node loss: every iteration still returns the whole batch
    assert all(i["env_steps"] == steps for i in [c["kill_iteration"], *c["recovery_iterations"],
                                                 *c["after"]["iterations"]])
    assert c["node_share"] == pytest.approx(0.5) and c["pool"]["restarts"] + c["pool"]["replacements"] >= 1
    assert "node loss cost" in proc.stdout


def test_worker_counts_and_node_count_are_checked():
    bench = load_benchmark("scaling")
    cfg, _ = bench.parse_config(["--quick", "--workers", "1", "3", "--set", "fleet.horizon=5"])
    assert cfg.workers == (1, 3) and cfg.overrides[-1] == "fleet.horizon=5"
    for bad in (["--nodes", "1"], ["--workers", "0"], ["--kill-after", "2"]):
        with pytest.raises(SystemExit):
            bench.parse_config(bad)
