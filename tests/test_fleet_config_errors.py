"""A bad fleet spec, mixture, plugin or curriculum: exit code 2 and a message naming it; nothing started."""

from pathlib import Path

import pytest

from metafleet.cli import main


@pytest.mark.parametrize(("text", "expected"), [
    ("fleet:\n  robots:\n    - {model: kuka_iiwa, id: a}\n    - {model: kuka_iiwa, id: b, mas: 2}\n",
     ["fleet.robots[1]", "unknown key(s) ['mas']"]),
    ("fleet:\n  robots:\n    - {model: kuka_iiwa, link_mass_scale: {uniform: [2, 1]}}\n",
     ["fleet.robots[0].link_mass_scale.uniform", "low must be <= high"]),
    ("fleet:\n  robots:\n    - {model: hal9000}\n", ["fleet.robots[0].model", "'hal9000'", "kuka_iiwa"]),
    ("fleet:\n  fleet_file: missing.yaml\n", ["fleet file 'missing.yaml' not found"]),
    ("fleet:\n  family: {reach: -1}\n", ["fleet.family", "weight of family 'reach'"]),
    ("fleet:\n  family: not_a_module_abc:Fam\n", ["fleet.family", "cannot import module 'not_a_module_abc'"]),
    ("fleet:\n  family: examples.nav2d:Nope\n", ["fleet.family", "has no attribute 'Nope'"]),
    ("fleet:\n  curriculum: examples.curriculum:nothing\n", ["curriculum", "has no attribute 'nothing'"]),
    ("fleet:\n  family: reach\n  robot: a1\n", ["supports robot kinds", "'a1'"]),
])
@pytest.mark.usefixtures("ray_must_not_start")
def test_bad_fleet_config_exits_2_before_anything_starts(tmp_path, monkeypatch, capsys, text, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # the repository root: examples/
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err
    assert not (tmp_path / "mlflow.db").exists()
