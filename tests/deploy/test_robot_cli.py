"""`fleet run` / `fleet serve-robot` through a parser built with metafleet.robot_commands.add_parsers."""

import argparse
import importlib.util
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from metafleet.robot_commands import add_parsers
from tests.fakes import make_policy_dir

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cli-token-456"
TASK = ["--task", "goal=[0.6, 0.1, 0.4]"]


def fleet(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fleet")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    return str(make_policy_dir(tmp_path_factory.mktemp("cli") / "policy", horizon=12))


def test_run_on_sim_prints_json(policy, capsys):
    assert fleet("run", policy, "--robot", "sim:kuka-0", "--episodes", "2", "--json", *TASK) == 0
    out = json.loads(capsys.readouterr().out)
    assert [e["steps"] for e in out["episodes"]] == [12, 12]  # the manifest's horizon
    assert out["mean_return"] == pytest.approx(np.mean([e["return"] for e in out["episodes"]]))
    assert out["robot"] == "sim:kuka-0" and out["safety"]["steps"] == 24
    assert 0.0 <= out["success_rate"] <= 1.0


def test_run_prints_per_episode_lines_and_the_mean(policy, capsys):
    assert fleet("run", policy, "--robot", "sim:kuka-2?motor_strength=0.9", "--max-action-rate", "none") == 0
    out = capsys.readouterr().out
    assert "episode 1/1: return" in out and "mean return" in out


def test_run_writes_a_readable_gif(policy, tmp_path, capsys):
    import imageio.v3 as iio

    video = tmp_path / "run.gif"
    assert fleet("run", policy, "--robot", "sim:kuka-0", "--video", str(video), *TASK) == 0
    frames = iio.imread(video, index=None)
    assert frames.shape == (13, 120, 160, 3)  # the reset frame + one per step
    assert frames.std() > 10  # a rendered scene, not a blank image


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--robot", "ssh:kuka"], "sim:<robot-id>"),
        (["--robot", "sim:"], "no robot id"),
        (["--robot", "sim:k?speed=3"], "valid: family"),
        (["--robot", "tcp://127.0.0.1"], "tcp://HOST:PORT"),
        (["--robot", "sim:k", "--task", "goal"], "expected KEY=VALUE"),
        (["--robot", "sim:k", "--task", "goal=[1,"], "not valid YAML"),
        (["--robot", "sim:k", "--task", "goal=nowhere"], "goal"),
        (["--robot", "sim:k", "--task", "speed=3"], "speed"),
        (["--robot", "sim:k", "--max-action-rate", "-1"], "--max-action-rate"),
        (["--robot", "sim:k", "--episodes", "0"], "--episodes"),
        (["--robot", "sim:k", "--video", "out.avi"], ".gif"),
        (["--robot", "sim:k", "--video", "/nonexistent/dir/x.gif"], "does not exist"),
        (["--robot", "tcp://127.0.0.1:9", "--video", "x.gif"], "sim: robot"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(policy, capsys, argv, fragment):
    assert fleet("run", policy, *argv) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is not None, reason="imageio-ffmpeg is installed")
def test_mp4_without_ffmpeg_suggests_gif(policy, capsys):
    assert fleet("run", policy, "--robot", "sim:k", "--video", "x.mp4") == 2
    err = capsys.readouterr().err
    assert "imageio-ffmpeg" in err and ".gif" in err


def test_bad_policy_dirs_exit_2(policy, tmp_path, capsys):
    assert fleet("run", str(tmp_path / "nope"), "--robot", "sim:k") == 2
    assert "no manifest.json" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    (tmp_path / "junk" / "weights.safetensors").write_bytes(b"x")
    assert fleet("run", str(tmp_path / "junk"), "--robot", "sim:k") == 2
    assert "not valid JSON" in capsys.readouterr().err
    tampered = make_policy_dir(tmp_path / "tampered", horizon=12)
    (tampered / "weights.safetensors").write_bytes((tampered / "weights.safetensors").read_bytes()[:-1] + b" ")
    assert fleet("run", str(tampered), "--robot", "sim:k") == 2
    assert "sha256" in capsys.readouterr().err


def test_serve_robot_needs_a_token(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("METAFLEET_ROBOT_TOKEN", raising=False)
    assert fleet("serve-robot", "sim:kuka-0") == 2
    assert "METAFLEET_ROBOT_TOKEN" in capsys.readouterr().err
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert fleet("serve-robot", "sim:kuka-0", "--token-file", str(empty)) == 2
    assert "empty" in capsys.readouterr().err
    monkeypatch.setenv("METAFLEET_ROBOT_TOKEN", TOKEN)
    assert fleet("serve-robot", "tcp://127.0.0.1:5", "--port", "0") == 2
    assert "expected sim:<robot-id>" in capsys.readouterr().err


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 30.0) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=deadline - time.monotonic()):
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line
            assert line, f"serve-robot exited early: {proc.stderr.read()}"
    raise AssertionError(f"no {prefix!r} line from serve-robot within {timeout}s")


def test_serve_robot_then_run_over_tcp(policy, tmp_path, monkeypatch, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "METAFLEET_ROBOT_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metafleet", "serve-robot", "sim:kuka-0?horizon=12", "--port", "0",
         "--token-file", str(token_file)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = wait_for_line(proc, "serving ")
        port = int(re.fullmatch(r"serving sim:kuka-0\?horizon=12 on 127\.0\.0\.1:(\d+)\n", line).group(1))
        monkeypatch.setenv("METAFLEET_ROBOT_TOKEN", TOKEN)
        assert fleet("run", policy, "--robot", f"tcp://127.0.0.1:{port}", "--episodes", "2", "--json", *TASK) == 0
        remote = json.loads(capsys.readouterr().out)
        assert fleet("run", policy, "--robot", "sim:kuka-0", "--episodes", "2", "--json", *TASK) == 0
        local = json.loads(capsys.readouterr().out)
        assert [e["return"] for e in remote["episodes"]] == [e["return"] for e in local["episodes"]]
        monkeypatch.setenv("METAFLEET_ROBOT_TOKEN", "wrong")
        assert fleet("run", policy, "--robot", f"tcp://127.0.0.1:{port}") == 2
        assert "authentication failed" in capsys.readouterr().err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
