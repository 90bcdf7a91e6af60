"""A local Ray started by `init_ray` refuses a client without its token (see docs/cluster.md).

The cluster runs in a subprocess with a HOME of its own, so Ray generates a fresh token in
`HOME/.ray/auth_token` (what Ray 2.60 does for a local `ray.init()`). Clients are separate processes
calling plain `ray.init(address=...)`, as any stranger on the machine could. A client with the token
must connect (so the refusals below are not an unreachable address); clients with no token or a
wrong one must be refused by the GCS with an authentication error.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90
CLIENT_TIMEOUT_S = 60

SERVER = """
import sys
import ray
from workers.ray_connect import init_ray
init_ray(num_cpus=1)
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # serve until the test closes stdin
ray.shutdown()
"""

CLIENT = """
import logging, sys
import ray
ray.init(address=sys.argv[1], logging_level=logging.WARNING)
print("connected, CPUs:", ray.cluster_resources().get("CPU"), flush=True)
"""


def _clean_env(home: Path) -> dict[str, str]:
    """This environment without any Ray address or token, with its own HOME (no ~/.ray/auth_token)."""
    drop = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return env


def _client_env(home: Path, **extra: str) -> dict[str, str]:
    # Dial 127.0.0.1 as given (Ray on Linux would swap in the host IP, where nothing listens), and give
    # up after ~2 refused attempts instead of Ray's default 20.
    return {**_clean_env(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_gcs_server_port_wait_time_s": "2",
            **extra}


def _wait_for_gcs(server: subprocess.Popen, log: Path) -> str:
    """The GCS address the server prints once its Ray is up."""
    selector = selectors.DefaultSelector()
    selector.register(server.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            line = server.stdout.readline()
            if line.startswith("GCS "):
                return line.split()[1]
            if not line and server.poll() is not None:
                break
    server.kill()
    pytest.fail(f"local Ray did not start within {START_TIMEOUT_S}s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Close stdin (the server shuts Ray down), then SIGKILL whatever is left of its process group."""
    with contextlib.suppress(OSError):
        server.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # the group is ours: start_new_session=True
    server.wait(timeout=10)


@pytest.fixture
def token_cluster(tmp_path):
    """(GCS address, token) of a local Ray started by `init_ray` in a subprocess."""
    home, log = tmp_path / "server-home", tmp_path / "server.log"
    with open(log, "w") as stderr:  # a file, not a pipe: a full pipe would block the server
        server = subprocess.Popen([sys.executable, "-c", SERVER], env=_clean_env(home), cwd=REPO_ROOT, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                  start_new_session=True)
    try:
        address = _wait_for_gcs(server, log)
        token_file = home / ".ray" / "auth_token"
        assert token_file.is_file(), "Ray did not generate a token for the local cluster: token auth is off"
        yield address, token_file.read_text().strip()
    finally:
        _stop(server)


def _connect(address: str, envs: dict[str, dict[str, str]]) -> dict[str, subprocess.CompletedProcess]:
    """Run one client per environment, all at once; their results by name."""
    clients = {name: subprocess.Popen([sys.executable, "-c", CLIENT, address], env=env, cwd=REPO_ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, env in envs.items()}
    results = {}
    for name, client in clients.items():
        try:
            out, err = client.communicate(timeout=CLIENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            client.kill()
            out, err = client.communicate()
            err += f"\n(test: no answer within {CLIENT_TIMEOUT_S}s)"
        results[name] = subprocess.CompletedProcess(client.args, client.returncode, out, err)
    return results


@pytest.mark.integration
def test_local_ray_refuses_clients_without_its_token(token_cluster, tmp_path):
    address, token = token_cluster
    assert address.startswith("127.0.0.1:"), address

    results = _connect(address, {
        "the token": _client_env(tmp_path / "friend", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
        "no token": _client_env(tmp_path / "stranger"),
        "a wrong token": _client_env(tmp_path / "stranger", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * len(token)),
    })
    friend = results.pop("the token")
    assert friend.returncode == 0 and "connected" in friend.stdout, (
        f"a client with the token must connect:\n{friend.stdout}\n{friend.stderr[-3000:]}")
    for what, stranger in results.items():
        assert stranger.returncode != 0 and "connected" not in stranger.stdout, f"a client with {what} got in"
        assert "Unauthenticated" in stranger.stderr or "InvalidAuthToken" in stranger.stderr, (
            f"a client with {what} failed, but not by authentication:\n{stranger.stderr[-3000:]}")
