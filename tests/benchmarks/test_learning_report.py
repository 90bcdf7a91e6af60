"""Issue 12's results table: benchmarks/learning.py's runs (per-task figures, baselines, curves; --merge; the
config and overrides of each learner) and the `learning-v2` / `learning-curves` tables benchmarks/report.py
renders from them."""

import json
import sys

import pytest

from tests.benchmarks.test_report import PROVENANCE
from tests.fakes import load_benchmark


@pytest.fixture(scope="module")
def report():
    module = load_benchmark("report")
    yield module
    sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("learning")
    yield module
    sys.modules.pop(module.__name__, None)


def per_round(values: dict) -> dict:
    return {"returns": {str(k): v for k, v in values.items()},
            "successes": {str(k): [1.0 if x > 5 else 0.0 for x in v] for k, v in values.items()}}


def point(iteration, env_steps, ret, se=0.5, success=0.0, rounds=(0, 1, 2)):
    return {"iteration": iteration, "env_steps": env_steps, "summary": {
        str(k): {"return_mean": ret + k, "return_stderr": se, "success_mean": success, "success_stderr": 0.0}
        for k in rounds}}


def run(family, algorithm, seed, returns, scratch, oracle=None, curve=(), env_steps=1000, wall=30.0):
    baselines = {"from-scratch": per_round(scratch), **({"oracle": per_round(oracle)} if oracle else {})}
    return {"family": family, "algorithm": algorithm, "seed": seed, "env_steps": env_steps, "wall_seconds": wall,
            **per_round(returns), "baselines": baselines, "curve": list(curve)}


SCRATCH = {0: [-2.0, -2.0], 1: [-2.0, -2.0], 2: [-2.0, -2.0]}
RUNS = [
    # reach: scratch pooled = -2, oracle pooled = 20 at round 2; belief R = 9 (seed 0), 13 (seed 1), maml R = 2.
    run("reach", "belief", 0, {0: [0.0, 2.0], 1: [4.0, 6.0], 2: [8.0, 10.0]}, SCRATCH,
        {0: [18.0, 22.0], 1: [18.0, 22.0], 2: [18.0, 22.0]},
        curve=[point(0, 0, -1.0), point(20, 400_000, 5.0), point(40, 800_000, 9.0)], env_steps=800_000, wall=600.0),
    run("reach", "belief", 1, {0: [0.0, 2.0], 1: [4.0, 6.0], 2: [12.0, 14.0]}, SCRATCH,
        {0: [20.0, 20.0], 1: [20.0, 20.0], 2: [20.0, 20.0]},
        curve=[point(0, 0, -3.0), point(20, 400_000, 7.0), point(40, 800_000, 11.0)], env_steps=800_000, wall=660.0),
    run("reach", "maml", 0, {0: [-4.0, -2.0], 1: [0.0, 2.0], 2: [0.0, 4.0]}, SCRATCH,
        curve=[point(i, 20_000 * i, float(i)) for i in range(0, 11)]),
    run("direction", "maml", 0, {0: [1.0, 3.0], 1: [2.0, 4.0], 2: [3.0, 5.0]}, SCRATCH),
    run("push", "pearl", 0, {0: [1.0, 3.0], 1: [7.0, 9.0]}, {0: [0.0, 0.0], 1: [0.0, 0.0]},
        curve=[point(0, 0, 1.0, rounds=(0, 1)), point(20, 5_000, 4.0, rounds=(0, 1))]),
]
DATA = {"format": "learning-v2", "runs": RUNS, "provenance": PROVENANCE}


def rows(lines):
    return {tuple(cell.strip() for cell in line.strip("|").split("|"))[:2]: [c.strip() for c in line.strip("|")
            .split("|")] for line in lines if line.startswith("| ") and not line.startswith("| family")}


def test_table_pools_tasks_and_seeds_and_measures_each_seed_against_the_family_yardsticks(report):
    lines = report.learning_report.render_learning_v2(DATA)
    assert lines[0] == ("| family | learner | after 0 | after 1 | after 2 | success (last round) | of oracle | seeds "
                        "| env steps / run | wall-clock / run |")
    table = rows(lines)
    assert list(table)[:4] == [("reach", "belief"), ("reach", "maml"), ("reach", "*from-scratch*"),
                               ("reach", "*oracle*")]  # families and learners in the order, yardsticks last
    # after 2: [8, 10, 12, 14] -> 11 ± stdev/sqrt(4) = 1.29; success (x > 5) 1 for all four.
    # of oracle: seed 0 (9 + 2) / (20 + 2) = 0.50, seed 1 15 / 22 = 0.68 -> 0.59 ± 0.09 over seeds.
    assert table["reach", "belief"] == ["reach", "belief", "1.00 ± 0.58", "5.00 ± 0.58", "11.00 ± 1.29",
                                        "1.00 ± 0.00", "0.59 ± 0.09", "0, 1", "800,000", "10.5 min"]
    assert table["reach", "maml"][4:7] == ["2.00 ± 2.00", "0.00 ± 0.00", "0.18"]  # (2 + 2) / 22, one seed
    assert table["reach", "*from-scratch*"][2:] == ["-2.00 ± 0.00"] * 3 + [
        "0.00 ± 0.00", "0 (yardstick)", "0, 1", "0 (untrained)", "–"]
    assert table["reach", "*oracle*"][4:9] == ["20.00 ± 0.82", "1.00 ± 0.00", "1 (yardstick)", "0, 1",
                                               "in belief runs"]
    assert table["direction", "maml"][6] == "n/a" and ("direction", "*oracle*") not in table  # no oracle run
    # push measured rounds 0 and 1 only: no "after 2", success after the last round it has, named.
    assert table["push", "pearl"][2:7] == ["2.00 ± 1.00", "8.00 ± 1.00", "–", "1.00 ± 0.00 (after 1)", "n/a"]


def test_oracle_no_better_than_scratch_gives_no_fraction(report):
    flat = {0: [-2.0, -2.0], 1: [-2.0, -2.0], 2: [-2.0, -2.0]}
    data = {**DATA, "runs": [run("reach", "belief", 0, {0: [1.0], 1: [1.0], 2: [1.0]}, SCRATCH, flat)]}
    assert rows(report.learning_report.render_learning_v2(data))["reach", "belief"][6] == "n/a (oracle <= scratch)"


def test_curves_average_seeds_per_evaluation_and_show_evenly_spaced_points(report):
    lines = report.learning_report.render_learning_curves(DATA)
    table = rows(lines)
    # belief: round 2 (return_mean + 2), seeds 0 and 1 at each iteration: mean and stderr over the two seeds.
    assert table["reach", "belief"][2:7] == ["0, 1", "2", "0.00 ± 1.00 @ 0", "8.00 ± 1.00 @ 400k",
                                             "12.00 ± 1.00 @ 800k"]
    assert table["reach", "belief"][7:] == ["–"] * 3
    # maml: 11 evaluations -> 6 evenly spaced (0, 2, 4, 6, 8, 10), one seed: stderr over tasks.
    assert table["reach", "maml"][4:] == [f"{i + 2:.2f} ± 0.50 @ {20 * i}k" if i else "2.00 ± 0.50 @ 0"
                                          for i in (0, 2, 4, 6, 8, 10)]
    assert table["push", "pearl"][3:6] == ["1", "2.00 ± 0.50 @ 0", "5.00 ± 0.50 @ 5k"]
    assert table["direction", "maml"][4].startswith("no evaluation common to every seed's run")


def test_report_renders_both_blocks_from_learning_v2_json(report, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "results" / "learning-v2.json").write_text(json.dumps(DATA))
    (tmp_path / "results" / "learning-v2-gpu.json").write_text(json.dumps({**DATA, "runs": RUNS[:1]}))
    (tmp_path / "results" / "learning-old.json").write_text(json.dumps(DATA))  # the old renderer on a v2 file
    doc = tmp_path / "docs" / "results.md"
    doc.write_text("".join(f"<!-- report:{name} -->\nstale\n<!-- /report:{name} -->\n\n"
                           for name in ("learning-v2", "learning-curves", "learning-curves-gpu", "learning-old")))
    assert report.main(["--root", str(tmp_path), "docs/results.md"]) == 0
    text = doc.read_text()
    assert "| reach | belief | 1.00 ± 0.58 |" in text and "| reach | belief | 0, 1 | 2 | 0.00 ± 1.00 @ 0 |" in text
    assert text.count("Source: `results/learning-v2.json`") == 2
    assert "| reach | belief | 0, 1 | 800,000 | 1.00 ± 0.58 | 5.00 ± 0.58 | 11.00 ± 1.29 | 0.50 ± 0.29 |" in text
    assert "Source: `results/learning-v2-gpu.json`" in text  # a suffixed curves block reads the suffixed file
    assert report.main(["--root", str(tmp_path), "--check", "docs/results.md"]) == 0


def test_runs_merged_from_several_commands_are_named(report):
    first = {**RUNS[0], "provenance": {"command": "python benchmarks/learning.py --families reach",
                                       "commit": "abc", "date": "2026-12-01T00:00:00+00:00"}}
    second = {**RUNS[3], "provenance": {"command": "python benchmarks/learning.py --families direction --merge",
                                        "commit": "def", "date": "2026-12-02T00:00:00+00:00"}}
    lines = report.learning_report.render_learning_v2({**DATA, "runs": [first, second]})
    assert lines[-1] == ("Runs merged from: `python benchmarks/learning.py --families reach` (commit `abc`, "
                         "2026-12-01); `python benchmarks/learning.py --families direction --merge` (commit `def`, "
                         "2026-12-02).")


def test_plot_writes_the_learning_curve_figure(report, tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "learning-v2.json").write_text(json.dumps(DATA))
    png = tmp_path / "img" / "learning-curves.png"
    assert report.main(["--root", str(tmp_path), "--plot", str(png)]) == 0
    assert png.stat().st_size > 5000
    assert report.main(["--root", str(tmp_path), "--plot", str(png), "--plot-from", "nothing"]) == 2


def test_each_learner_runs_its_family_config_or_its_own(bench):
    from learner.config import load_config

    config, overrides = bench.job("push", "pearl")
    assert config.endswith("configs/push-pearl.yaml") and overrides == []  # PEARL's own sizes, not overridden
    config, overrides = bench.job("reach", "belief")
    assert config.endswith("configs/reach-mtppo.yaml") and overrides == ["learner.algorithm=belief"]
    assert bench.job("velocity", "maml")[0].endswith("configs/velocity.yaml")
    assert bench.overrides_for("rl2", 2, None, None, ["train.eval_tasks=2"]) == [
        "learner.algorithm=rl2", "learner.trial_episodes=2", "train.seed=2", "train.eval_tasks=2"]
    assert bench.overrides_for("pearl", 0, 5, "local", []) == [
        "train.seed=0", "train.iterations=5", "workers.backend=local"]
    for family in bench.FAMILIES:  # every cell of the table has a loadable config
        for algorithm in ("belief", "pearl", "maml", "rl2", "mtppo"):
            path, _ = bench.job(family, algorithm)
            cfg = load_config(path, bench.overrides_for(algorithm, 0, None, None, []))
            assert cfg.learner.algorithm == algorithm and cfg.fleet.family == family


def test_a_missing_own_config_is_named(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CONFIGS", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"pearl on dynamics runs its own config .*dynamics-pearl.yaml"):
        bench.job("dynamics", "pearl")


def fake_record(family, algorithm, seed, iterations, backend, extra, prov=None):
    return {"family": family, "algorithm": algorithm, "seed": seed, "env_steps": 10, "wall_seconds": 1.0,
            "returns": {"0": [float(seed)]}, "successes": {"0": [0.0]}, "baselines": {}, "curve": [],
            "overrides": extra, "provenance": {"command": prov["command"]}}


def test_merge_adds_runs_and_replaces_a_rerun(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "run_one", fake_record)
    out = tmp_path / "lv2.json"
    common = ["--iterations", "1", "--out", str(out)]
    assert bench.main(["--families", "reach", "--algorithms", "maml", "mtppo", "--seeds", "0", "1", *common]) == 0
    assert bench.main(["--families", "push", "--algorithms", "pearl", "--seeds", "0", *common, "--merge"]) == 0
    assert bench.main(["--families", "reach", "--algorithms", "maml", "--seeds", "1", *common, "--merge",
                       "--set", "train.eval_tasks=3"]) == 0
    data = json.loads(out.read_text())
    keys = [(r["family"], r["algorithm"], r["seed"]) for r in data["runs"]]
    assert keys == [("reach", "maml", 0), ("reach", "maml", 1), ("reach", "mtppo", 0), ("reach", "mtppo", 1),
                    ("push", "pearl", 0)]
    assert data["runs"][1]["overrides"] == ["train.eval_tasks=3"]  # the rerun replaced seed 1, in place
    assert "--merge" in data["provenance"]["command"] and "--merge" not in data["runs"][0]["provenance"]["command"]
    assert bench.main(["--families", "push", "--algorithms", "pearl", "--seeds", "0", *common]) == 0
    assert len(json.loads(out.read_text())["runs"]) == 1  # without --merge a new file starts


def test_merge_refuses_a_file_that_is_not_a_learning_json_before_training(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "run_one", lambda *a, **k: pytest.fail("trained before checking --merge's file"))
    out = tmp_path / "envs.json"
    out.write_text(json.dumps({"rows": [], "provenance": PROVENANCE}))
    with pytest.raises(ValueError, match=r"--merge: .*envs\.json is not a benchmarks/learning.py JSON"):
        bench.main(["--families", "reach", "--algorithms", "maml", "--seeds", "0", "--out", str(out), "--merge"])
    with pytest.raises(SystemExit):  # --out is the JSON file, not the old output directory
        bench.main(["--families", "reach", "--algorithms", "maml", "--out", str(tmp_path / "learning")])
