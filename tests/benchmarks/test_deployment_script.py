"""Smoke test of benchmarks/deployment.py on a registered smoke policy: the adaptation rows, the pull latency
and the raw JSON with its provenance. No timing is asserted."""

import json
import sys
from pathlib import Path

import pytest

from tests.fakes import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    """configs/smoke.yaml trained once into a private sqlite store (alias @candidate of `smoke`)."""
    from metafleet.cli import main

    home = tmp_path_factory.mktemp("deployment-bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
        assert main(["train", str(ROOT / "configs/smoke.yaml")]) == 0
        yield "models:/smoke@candidate"  # the store stays set while the module's tests run


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("deployment")
    yield module
    sys.modules.pop(module.__name__, None)


@pytest.mark.slow
def test_quick_run_adapts_pulls_and_records_where_it_ran(bench, smoke_model, tmp_path, capsys):
    uri = smoke_model
    out = tmp_path / "deployment.json"
    argv = ["--model", uri, "--tasks", "2", "--episodes", "2", "--repeats", "2", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| mean ± stderr |" in printed and "pull-to-first-action, median of 2" in printed
    data = json.loads(out.read_text())
    assert [r["task_id"] for r in data["adaptation"]] == ["reach/test/0", "reach/test/1"]
    assert data["version"] == "1" and data["model"] == uri
    for key in ("pull", "load", "first_action", "total"):
        assert len(data["latency_ms_per_repeat"][key]) == 2 and data["latency_ms"][key] > 0
    prov = data["provenance"]
    assert prov["command"].startswith("python benchmarks/deployment.py --model models:/smoke@candidate")
    assert prov["commit"] and prov["machine"]["cpu_count"] >= 1 and len(prov["load_average_start"]) == 3
