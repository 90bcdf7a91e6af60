"""The import contracts in pyproject.toml hold on the real tree, and a broken one fails `lint-imports`.

CI runs `lint-imports`; these tests prove the check has teeth: copies of our packages with an upward
import, an import cycle or a forbidden import injected must each make it exit non-zero and name the
injected import. The contracts come from the real pyproject.toml, so they follow its edits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("metafleet", "deploy", "learner", "workers", "policy", "fleet")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    beside = Path(sys.executable).with_name("lint-imports")
    command = str(beside) if beside.exists() else shutil.which("lint-imports") or "lint-imports"
    # PYTHONPATH=cwd: the packages are found in the tree under test, not in the editable install.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([command, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_tree_keeps_every_import_contract():
    done = _lint_imports(REPO_ROOT)
    assert done.returncode == 0, f"lint-imports failed on the tree:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"


def _copy_packages(dest: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO_ROOT / "pyproject.toml", dest / "pyproject.toml")


# name -> (files to add to the copy, what lint-imports must print for the injected import)
VIOLATIONS = {
    "upward import (fleet imports learner)": (
        {"fleet/injected_upward.py": "import learner.config\n"},
        "fleet.injected_upward -> learner.config"),
    "import cycle (two fleet modules import each other)": (
        {"fleet/injected_cycle_a.py": "import fleet.injected_cycle_b\n",
         "fleet/injected_cycle_b.py": "import fleet.injected_cycle_a\n"},
        "injected_cycle_"),
    "forbidden import (the policy package imports torch)": (
        {"policy/injected_torch.py": "import torch\n"},
        "policy.injected_torch -> torch"),
}


@pytest.mark.parametrize("violation", list(VIOLATIONS))
def test_an_injected_violation_breaks_a_contract(violation, tmp_path):
    files, evidence = VIOLATIONS[violation]
    _copy_packages(tmp_path)
    for relative, source in files.items():
        (tmp_path / relative).write_text(source)
    done = _lint_imports(tmp_path)
    assert done.returncode != 0, f"{violation}: lint-imports passed:\n{done.stdout[-4000:]}"
    assert "BROKEN" in done.stdout and evidence in done.stdout, (
        f"{violation}: {evidence!r} not reported:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}")
