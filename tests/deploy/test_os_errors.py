"""Every command turns an unusable user-given path (missing parent, a file where a directory is expected,
a directory where a file is expected, a path the OS refuses) into `fleet: error:` and exit 2."""

import pytest

from metafleet.cli import main
from tests.fakes import make_policy_dir

EVAL = ["--backend", "local", "--workers", "1", "--episodes", "1", "--tasks", "1", "--steps", "0"]


@pytest.fixture
def paths(store, tmp_path):
    """A good policy directory, a plain file, a directory, and paths under them that cannot exist."""
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a directory")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    (a_dir / "v.gif").mkdir()  # a directory with a video's name
    config = tmp_path / "config.yaml"
    config.write_text("name: os-errors\n")
    return {"policy": make_policy_dir(tmp_path / "policy"), "file": a_file, "dir": a_dir,
            "under_file": a_file / "child", "config": config, "proc": "/proc/forbidden/policy"}


def commands(p) -> dict[str, list]:
    return {
        "pull --out under /proc": ["pull", "models:/smoke/1", "--out", p["proc"]],
        "pull --out under a file": ["pull", "models:/smoke/1", "--out", p["under_file"]],
        "run DIR is a file": ["run", p["file"], "--robot", "sim:kuka-1"],
        "run DIR missing": ["run", p["under_file"], "--robot", "sim:kuka-1"],
        "run --video is a directory": ["run", p["policy"], "--robot", "sim:kuka-1", "--video", p["dir"] / "v.gif"],
        "run --video under a file": ["run", p["policy"], "--robot", "sim:kuka-1", "--video", p["under_file"] / "v.gif"],
        "run --token-file is a directory": ["run", p["policy"], "--robot", "tcp://127.0.0.1:9", "--token-file",
                                            p["dir"]],
        "run --token-file missing": ["run", p["policy"], "--robot", "tcp://127.0.0.1:9", "--token-file",
                                     p["under_file"]],
        "adapt MODEL is a file": ["adapt", p["file"], "--robot", "sim:kuka-1"],
        "adapt --config is a directory": ["adapt", p["policy"], "--robot", "sim:kuka-1", "--config", p["dir"]],
        "eval MODEL under a file": ["eval", p["under_file"], *EVAL],
        "eval --config missing": ["eval", p["policy"], *EVAL, "--config", p["under_file"]],
        "promote --config is a directory": ["promote", "smoke", "--version", "1", "--config", p["dir"]],
        "serve-robot --token-file is a directory": ["serve-robot", "sim:kuka-1", "--token-file", p["dir"]],
        "train config is a directory": ["train", p["dir"]],
        "train config under a file": ["train", p["under_file"]],
        "train --set fleet_file under a file": ["train", p["config"], "--set",
                                                f"fleet.fleet_file={p['under_file']}"],
    }


def test_every_command_reports_bad_paths_as_bad_input(paths, capsys):
    for name, argv in commands(paths).items():
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("fleet: error:") and "Traceback" not in err, (name, code, err)
