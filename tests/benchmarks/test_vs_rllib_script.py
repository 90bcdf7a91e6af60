"""Smoke tests of benchmarks/vs_rllib.py: the side-by-side run works end to end; no timing is asserted.
The RLlib run needs the bench extra (`pip install -e ".[bench]"`) and is skipped without it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vs_rllib.py"


def run_quick(tmp_path, *flags):
    out = tmp_path / "vs-rllib.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray, not a cluster
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out), *flags], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def rllib_importable() -> bool:
    return subprocess.run([sys.executable, "-c", "import ray.rllib.algorithms.ppo"], capture_output=True,
                          timeout=120).returncode == 0


def check_systems(data, names):
    assert set(data["systems"]) == set(names)
    steps = data["config"]["steps_per_iteration"]
    for system in data["systems"].values():
        assert len(system["steps_per_s"]) == data["config"]["rounds"]
        for r in system["rounds"]:
            assert [i["env_steps"] for i in r["iterations"]] == [steps] * data["config"]["iterations"]
        assert system["fraction_of_physics_limit"] == pytest.approx(system["mean"] / data["physics_limit"][
            "env_steps_per_s"])
        env = data["env_limit"][system["family"]]  # the rollout loop alone on the system's own env
        assert env["env_steps_per_s"] == pytest.approx(env["env_steps_per_s_per_core"] * env["cores"])
        assert system["fraction_of_env_limit"] == pytest.approx(system["mean"] / env["env_steps_per_s"])
        assert env["moving_physics"]["substeps"] > 0 and env["moving_physics"]["step_simulation_per_s_per_core"] > 0
    assert data["physics_limit"]["before"]["raw_step_simulation_per_s_per_core"] > 0
    assert "provenance" in data


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_against_rllib(tmp_path):
    if not rllib_importable():
        pytest.skip("RLlib is not installed (pip install -e '.[bench]')")
    stdout, data = run_quick(tmp_path)
    check_systems(data, ["mtppo", "maml", "rllib"])
    assert data["rllib_initial_log_std"] and all(v == pytest.approx(math.log(0.5)) for v in data[
        "rllib_initial_log_std"])  # the same initial action std as metafleet's configs (init_std 0.5)
    assert set(data["ratios"]) == {"mtppo/rllib", "maml/rllib"}
    assert "ratio mtppo/rllib:" in stdout and "physics limit:" in stdout


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_without_rllib(tmp_path):
    stdout, data = run_quick(tmp_path, "--systems", "mtppo", "maml", "mtppo_overlap", "mtppo_joint")
    check_systems(data, ["mtppo", "maml", "mtppo_overlap", "mtppo_joint"])
    assert data["ratios"] == {} and "| metafleet MAML |" in stdout
    assert set(data["env_limit"]) == {"reach", "reach_joint"} and "env limit (reach_joint):" in stdout
    assert "physics while the arm moves (reach_joint):" in stdout
    assert data["systems"]["mtppo_joint"]["family"] == "reach_joint"


def test_flags_override_the_quick_sizes_and_bad_counts_are_refused():
    bench = load_benchmark("vs_rllib")
    cfg, path = bench.parse_config(["--quick", "--rounds", "4", "--systems", "maml"])
    assert (cfg.rounds, cfg.iterations, cfg.systems, path) == (4, bench.QUICK.iterations, ("maml",), None)
    assert cfg.steps_per_iteration == 2 * 2 * 2 * 10
    with pytest.raises(SystemExit):
        bench.parse_config(["--rounds", "0"])
