"""A pulled policy folder named like one of metafleet's packages does not shadow it in Ray workers.

Ray puts the driver's working directory on every worker's `sys.path` ahead of the installed packages; a folder
`./policy` (a pulled policy: no `__init__.py`, so a namespace package) then won the import of `policy` over an
editable install's finder, and every rollout worker failed with `cannot import name 'PolicyWeights' from 'policy'
(unknown location)`. Reproduced as a user would: train, pull into ./policy, ./fleet and ./learner, evaluate on a real
local Ray (127.0.0.1) from that directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def fleet(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metafleet", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_pulled_folders_named_like_our_packages_do_not_shadow_them_in_ray_workers(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    trained = fleet(tmp_path, env, "train", str(ROOT / "configs" / "smoke.yaml"), "--set", "workers.backend=local")
    assert trained.returncode == 0, trained.stderr[-2000:]
    for name in ("policy", "fleet", "learner"):
        pulled = fleet(tmp_path, env, "pull", "models:/smoke@candidate", "--out", name)
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        assert (tmp_path / name / "manifest.json").is_file() and not (tmp_path / name / "__init__.py").exists()
    evaluated = fleet(tmp_path, env, "eval", "models:/smoke@candidate", "--backend", "ray", "--workers", "1",
                      "--tasks", "1", "--episodes", "1", "--steps", "0", "--json")
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-3000:]
    assert "0" in json.loads(evaluated.stdout)["summary"]
