"""benchmarks/transfer.py: the negative-transfer table from per-task results."""


import pytest

from learner.multitask_eval import TaskEvalResult
from tests.fakes import load_benchmark


def result(returns):
    return TaskEvalResult([f"reach/train/{i}" for i in range(len(returns))], returns, [0.0] * len(returns), 10)


def test_table_reports_mean_transfer_worse_tasks_and_the_worst_one():
    bench = load_benchmark("transfer")
    text = bench.table(result([10.0, 20.0, 30.0]), {"concat": result([12.0, 15.0, 33.0])})
    assert "| single-task (one network per goal) | 20.00 |" in text
    assert "| multi-task concat | 20.00 | +0.00 | 1/3 | reach/train/1 (-5.00) |" in text


def test_every_variant_config_validates_before_training():
    bench = load_benchmark("transfer")
    with pytest.raises(Exception, match=r"learner\.nonsense"):
        bench.main(["--variants", "concat", "--set", "learner.nonsense=1"])
