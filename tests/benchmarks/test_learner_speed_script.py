"""Smoke test of benchmarks/learner_speed.py: every learner's update is timed on real data; no timing is
asserted, only that the figures are consistent with each other."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "learner_speed.py"


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_times_each_learner(tmp_path):
    out = tmp_path / "learner-speed.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--devices", "cpu", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["learner"]: r for r in data["rows"]}
    assert {"maml", "mtppo"} <= set(rows)  # PEARL may be skipped (with its error) while it is being wired in
    assert {s["learner"] for s in data["skipped"]} <= {"pearl", "pearl-overlap"}
    for r in rows.values():
        assert r["gradient_steps_per_s"] == pytest.approx(r["gradient_steps_per_update"] / r["learn_seconds"][0])
        assert 0 < r["blocked_fraction"] < 1
    assert rows["maml"]["gradient_steps_per_update"] == 5  # ppo_epochs 5 x one minibatch
    # the main job's task model: 20 steps (QUICK) beside the update by default, inside it with model_background off
    assert rows["belief"]["background_steps"] == 20 and rows["belief"]["gradient_steps_per_update"] == 5
    assert rows["belief-inline"]["background_steps"] == 0
    assert rows["belief-inline"]["gradient_steps_per_update"] == 5 + 20
    assert rows["belief-inline"]["overrides"] == ["learner.model_background=false"]
    overlapped = rows["pearl-overlap"]
    assert overlapped["workers"].startswith("ray x") and "train.overlap=true" in overlapped["overrides"]


def test_gradient_steps_per_update_follows_the_config():
    from learner.config import load_config

    bench = load_benchmark("training_runs")
    assert bench.gradient_steps_per_update(load_config(data={"learner": {"ppo_epochs": 3, "minibatches": 4}})) == 12
    cfg = load_config(data={"learner": {"algorithm": "pearl", "gradient_steps": 7}})
    assert bench.gradient_steps_per_update(cfg) == 7
    few_tasks = load_config(data={"learner": {"minibatches": 8}, "train": {"meta_batch_size": 2}})
    assert bench.gradient_steps_per_update(few_tasks) == 5 * 2


def test_the_device_script_parses_and_names_flags_its_benchmarks_accept():
    """benchmarks/device_check.sh is run once, on a lent GPU host, with no chance to fix it there: its shell must
    parse and every flag it passes must be accepted by the benchmark it calls."""
    import shlex

    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    calls = [line.split("python ", 1)[1] for line in text.splitlines() if "python benchmarks/" in line]
    assert {c.split()[0] for c in calls} == {"benchmarks/learner_speed.py", "benchmarks/scaling.py"}
    for call in calls:
        words = shlex.split(call.replace('"$out/', '"/tmp/'))
        bench = load_benchmark(Path(words[0]).stem)
        cfg, path = bench.parse_config(words[1:])
        assert path.startswith("/tmp/") and cfg is not None
