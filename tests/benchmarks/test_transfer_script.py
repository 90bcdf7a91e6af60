"""benchmarks/transfer.py: the negative-transfer table from per-task results."""

import importlib.util
import sys
from pathlib import Path

import pytest

from learner.multitask_eval import TaskEvalResult

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "transfer.py"


def load_script():
    spec = importlib.util.spec_from_file_location("transfer_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["transfer_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def result(returns):
    return TaskEvalResult([f"reach/train/{i}" for i in range(len(returns))], returns, [0.0] * len(returns), 10)


def test_table_reports_mean_transfer_worse_tasks_and_the_worst_one():
    bench = load_script()
    text = bench.table(result([10.0, 20.0, 30.0]), {"concat": result([12.0, 15.0, 33.0])})
    assert "| single-task (one network per goal) | 20.00 |" in text
    assert "| multi-task concat | 20.00 | +0.00 | 1/3 | reach/train/1 (-5.00) |" in text


def test_every_variant_config_validates_before_training():
    bench = load_script()
    with pytest.raises(Exception, match=r"learner\.nonsense"):
        bench.main(["--variants", "concat", "--set", "learner.nonsense=1"])
