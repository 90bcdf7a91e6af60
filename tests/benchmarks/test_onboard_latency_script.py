"""Smoke test of benchmarks/onboard_latency.py: every kind (rma included) is timed through PolicyDriver.act at the
robots-arm sizes and the raw JSON carries its provenance. No timing is asserted."""

import json
import sys

import pytest

from tests.fakes import load_benchmark


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("onboard_latency")
    yield module
    sys.modules.pop(module.__name__, None)


def test_quick_run_times_every_kind_and_records_where_it_ran(bench, tmp_path, capsys):
    out = tmp_path / "onboard-latency.json"
    assert bench.main(["--steps", "30", "--warmup", "5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| rma |" in printed and "rma per step: median" in printed
    data = json.loads(out.read_text())
    assert list(data["kinds"]) == ["mlp", "film", "rl2", "pearl", "belief", "rma", "rma-fixed"]
    for row in data["kinds"].values():
        assert row["steps"] == 30 and 0 < row["median_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert data["sizes"] | {"blas_threads": None} == {"obs": 23, "act": 7, "hidden": [128, 128], "history": 10,
                                                       "adaptation": [256, 128], "latent": 8, "episode_steps": 50,
                                                       "blas_threads": None}
    assert data["target_ms"] == 1.0 and isinstance(data["rma_median_within_target"], bool)
    prov = data["provenance"]
    assert prov["command"].startswith("python benchmarks/onboard_latency.py") and prov["commit"]
    assert prov["machine"]["cpu_count"] >= 1 and len(prov["load_average_start"]) == 3


def test_one_kind_alone_and_quick_writes_only_when_asked(bench, monkeypatch, capsys):
    def refuse(*args):
        raise AssertionError("--quick without --json must not write results/onboard-latency.json")

    monkeypatch.setattr(bench.provenance, "write", refuse)
    assert bench.main(["--quick", "--kinds", "rma"]) == 0
    printed = capsys.readouterr().out
    assert "| rma |" in printed and "| mlp |" not in printed
