"""StopOnSignal with real signals on a real subprocess: the first asks, the second exits at once."""

import signal
import subprocess
import sys
import time

import pytest

from learner.stopping import StopOnSignal, Stopped, exit_code

CHILD = """
import sys, time
from learner.stopping import StopOnSignal
with StopOnSignal() as stop:
    print("ready", flush=True)
    while stop.requested is None:
        time.sleep(0.01)
    print("requested", stop.requested, flush=True)
    if sys.argv[1] == "finish":
        sys.exit(0)
    time.sleep(30)  # a long iteration: only a second signal ends it early
"""


def start_child(mode: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_is_a_request_not_an_exit(signum):
    child = start_child("finish")
    child.send_signal(signum)
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    assert f"requested {int(signum)}" in out
    assert "stopping after the current iteration" in err and "Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_exits_at_once_with_the_shell_code(signum):
    child = start_child("linger")
    child.send_signal(signum)
    assert child.stdout.readline().startswith("requested")
    started = time.monotonic()
    child.send_signal(signum)
    _, err = child.communicate(timeout=20)
    assert time.monotonic() - started < 10
    assert child.returncode == exit_code(signum) == 128 + int(signum)
    assert "stopping now" in err and "Traceback" not in err


def test_handlers_are_restored_and_stopped_carries_the_exit_code():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    assert Stopped("x", signal.SIGTERM, "run1", 3).exit_code == 143
    assert Stopped("x", signal.SIGINT).exit_code == 130
