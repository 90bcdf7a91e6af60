"""Smoke test of benchmarks/envs.py: every family x compatible robot gets a row; no timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.robots import ROBOT_MODELS
from fleet.tasks import FAMILIES

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "envs.py"


@pytest.mark.slow
def test_quick_run_has_a_row_per_compatible_pair(tmp_path):
    out = tmp_path / "envs.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {(name, model.name) for name, family in FAMILIES.items() for model in ROBOT_MODELS.values()
                if model.kind in (getattr(family, "robot_kinds", None) or (model.kind,))}
    rows = json.loads(out.read_text())["rows"]
    assert {(r["family"], r["robot"]) for r in rows} == expected
    for row in rows:
        assert row["env_steps_per_s"] > 0 and row["raw_steps_per_s"] > 0 and row["unguarded_steps_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["env_steps_per_s"] / row["raw_steps_per_s"])
        assert f"| {row['family']} | {row['robot']} |" in proc.stdout
