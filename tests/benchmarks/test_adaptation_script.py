"""Smoke test of benchmarks/adaptation.py: a tiny run end to end; the equality check can fail."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "adaptation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("adaptation_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_quick_run_checks_both_paths_and_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "adaptation.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| second | 2 |" in printed and "| first | 2 |" in printed
    data = json.loads(out.read_text())
    assert [(c["order"], c["meta_batch"]) for c in data["cases"]] == [("second", 2), ("first", 2)]
    for case in data["cases"]:
        assert case["max_abs_diff"] <= bench.TOLERANCE
        assert len(case["batched_s"]) == len(case["loop_s"]) == 1 and case["speedup"] > 0


def test_paths_that_disagree_stop_the_benchmark(bench, monkeypatch):
    exact = bench.loop_gradient

    def off_by_a_bit(*args):
        loss, grads = exact(*args)
        return loss, [g + 1e-3 for g in grads]

    monkeypatch.setattr(bench, "loop_gradient", off_by_a_bit)
    with pytest.raises(SystemExit, match="gradients differ"):
        bench.main(["--quick", "--orders", "first"])
