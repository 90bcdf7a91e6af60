"""benchmarks/learning.py: the table and figure from results; configs are checked before any run."""

import pytest

from tests.fakes import load_benchmark


def fake_run(family, algorithm, seed, returns):
    return {"family": family, "algorithm": algorithm, "seed": seed, "env_steps": 1000, "wall_seconds": 1.0,
            "returns": {str(k): v for k, v in returns.items()}, "successes": {}}


def test_table_pools_tasks_and_seeds_per_family_and_algorithm(tmp_path):
    bench = load_benchmark("learning")
    results = [fake_run("reach", "maml", 0, {0: [1.0, 3.0], 1: [5.0, 7.0]}),
               fake_run("reach", "maml", 1, {0: [2.0, 2.0], 1: [6.0, 6.0]}),
               fake_run("direction", "mtppo", 0, {0: [-1.0, 1.0], 1: [0.0, 0.0]})]
    text = bench.table(results)
    rows = text.splitlines()
    assert rows[0].startswith("| family | algorithm | seeds |")
    assert "| reach | maml | 2 | 1,000 | 2.00 ± 0.41 | 6.00 ± 0.41 |" in rows
    assert "| direction | mtppo | 1 | 1,000 | 0.00 ± 1.00 | 0.00 ± 0.00 |" in rows
    bench.figure(results, tmp_path / "learning.png")
    assert (tmp_path / "learning.png").stat().st_size > 1000


def test_bad_grid_fails_before_training(capsys):
    bench = load_benchmark("learning")
    with pytest.raises(Exception, match=r"learner\.nonsense"):
        bench.main(["--families", "reach", "--algorithms", "maml", "--set", "learner.nonsense=1"])
