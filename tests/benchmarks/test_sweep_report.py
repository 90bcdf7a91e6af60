"""benchmarks/sweep_report.py renders a sweep's results JSON: a row per point and model, mean ± stderr over seeds."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.sweep_report import render_sweep


def trial(key, seed):
    return {"key": key, "seed": seed, "wall_seconds": 60.0, "env_steps": 1000}


def test_a_sweep_renders_each_point_and_yardstick_with_its_seeds():
    cells = {"0": {"success": [0.5, 0.1], "return": [1.0, 0.2]}, "1": {"success": [0.9, 0.05], "return": [3.0, 0.1]}}
    data = {"summary": [{"point": {}, "algorithm": "belief", "seeds": [0, 1, 2], "env_steps": 1000, "rounds": cells,
                         "baselines": {"oracle": {"0": {"success": [1.0, 0.0], "return": [4.0, 0.0]}}}}],
            "trials": [trial("seed=0", 0), trial("seed=1", 1), trial("seed=2", 2)],
            "sweep": {"config": "configs/reach.yaml", "overrides": []}, "wall_seconds": 240.0, "parent_run_id": "p1"}
    lines = render_sweep(data)
    assert lines[0] == "| model | seeds | success after 0 | success after 1 | return after 0 | return after 1 |"
    assert lines[2] == "| belief | 3 | 0.50 ± 0.10 | 0.90 ± 0.05 | 1.00 ± 0.20 | 3.00 ± 0.10 |"
    assert lines[3] == "| oracle | 3 | 1.00 ± 0.00 | – | 4.00 ± 0.00 | – |"
    assert "3 trials of `configs/reach.yaml`, 1,000 env steps each; 1.0 min per trial" in lines[-1]
    assert "4.0 min for the sweep" in lines[-1]
