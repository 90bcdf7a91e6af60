"""Bad input: exit code 2, a message naming what is wrong and what is expected, nothing started."""

import pytest

from metafleet.cli import main


@pytest.fixture
def write(tmp_path):
    def _write(text: str) -> str:
        path = tmp_path / "cfg.yaml"
        path.write_text(text)
        return str(path)

    return _write


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("learner:\n  inner_lrr: 0.1\n", [], ["learner.inner_lrr: unknown key", "inner_lr"]),
        ("learner:\n  inner_lr: fast\n", [], ["learner.inner_lr", "valid number"]),
        ("train:\n  iterations: -3\n", [], ["train.iterations", "greater than or equal to 1"]),
        ("fleet:\n  family: juggle\n", [], ["fleet.family", "juggle", "known: ", "reach"]),
        ("fleet:\n  robot: r2d2\n", [], ["fleet.robot", "r2d2", "kuka_iiwa"]),
        ("bogus: 1\n", [], ["bogus: unknown key", "learner"]),
        ("", ["learner.nope=1"], ["learner.nope: unknown key"]),
        ("", ["learner.inner_lr"], ["expected KEY=VALUE"]),
        ("- a\n- b\n", [], ["must hold a mapping"]),
        ("train: [\n", [], ["not valid YAML"]),
    ],
)
@pytest.mark.usefixtures("ray_must_not_start")
def test_bad_config_exits_2_before_anything_starts(write, capsys, tmp_path, monkeypatch, text, overrides, expected):
    monkeypatch.chdir(tmp_path)
    args = ["train", write(text)] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_config_file(capsys):
    assert main(["train", "/nonexistent/cfg.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_unreachable_mlflow_fails_before_workers(ray_must_not_start, write, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert main(["train", write("name: x\n")]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "unreachable" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "models:/x/1", "--steps", "2,1"], "--steps"),
        (["eval", "models:/x/1", "--episodes", "0"], ">= 1"),
        (["eval", "not-a-uri"], "expected a policy directory"),
    ],
)
def test_bad_eval_arguments(capsys, args, expected):
    assert main(args) == 2
    assert expected in capsys.readouterr().err


def test_eval_unknown_model(mlflow_uri, capsys):
    assert main(["eval", "models:/missing@production", "--backend", "local"]) == 2
    assert "models:/missing@production" in capsys.readouterr().err


def test_train_needs_a_config_or_resume(capsys):
    assert main(["train"]) == 2
    assert "train needs a CONFIG file (or --resume RUN_ID)" in capsys.readouterr().err


def test_resume_of_an_unknown_run(ray_must_not_start, mlflow_uri, capsys):
    assert main(["train", "--resume", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume run '0123456789abcdef'" in err
