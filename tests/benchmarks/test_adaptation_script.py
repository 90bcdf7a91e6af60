"""Smoke test of benchmarks/adaptation.py: a tiny run end to end; the equality check can fail."""

import json
import sys

import pytest

from tests.fakes import load_benchmark


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("adaptation")
    yield module
    sys.modules.pop(module.__name__, None)


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
    prov = data["provenance"]  # where the figures came from, for benchmarks/report.py
    assert prov["command"] == f"python benchmarks/adaptation.py --quick --json {out}"
    assert prov["commit"] and prov["date"] and len(prov["load_average_start"]) == len(prov["load_average_end"]) == 3
    assert prov["machine"]["cpu_count"] >= 1 and prov["machine"]["torch"]


def test_paths_that_disagree_stop_the_benchmark(bench, monkeypatch):
    exact = bench.loop_gradient

    def off_by_a_bit(*args):
        loss, grads = exact(*args)
        return loss, [g + 1e-3 for g in grads]

    monkeypatch.setattr(bench, "loop_gradient", off_by_a_bit)
    with pytest.raises(SystemExit, match="gradients differ"):
        bench.main(["--quick", "--orders", "first"])
