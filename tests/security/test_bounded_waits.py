"""Every registry command (and `fleet eval`, which loads from the registry) bounds its waits and exits 2 with a
message naming the server: against a real socket on 127.0.0.1 that accepts and never answers, and one that
answers HTTP 401 (docs/security.md, "Bounded waits and clean errors"). The commands run in a child process, so a
command that waits on MLflow's own defaults (minutes) fails this test at its timeout instead of hanging the
suite."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "pull": ["pull", "models:/reach@production", "--out", "policy"],
    "promote": ["promote", "reach", "--version", "1", "--episodes", "1", "--tasks", "1"],
    "rollback": ["rollback", "reach", "--robot", "r1"],
    "status": ["status"],
    "history": ["history", "reach"],
    "eval": ["eval", "models:/reach@production", "--backend", "local", "--workers", "1", "--episodes", "1",
             "--tasks", "1", "--steps", "0"],
}
PASSWORD = "s3cret-pw"
TIMEOUT_S = 1  # the bound under test, set where fleet sets it (learner.tracking.HTTP_LIMITS)
# each command in the child: the bound once (no retries) plus the child's own work. The bound a command set is
# taken out of the environment before the next runs, so each command must set its own.
CHILD = """
import json, os, sys, time
from learner.tracking import HTTP_LIMITS
HTTP_LIMITS.update(MLFLOW_HTTP_REQUEST_TIMEOUT="{timeout}", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                               MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0")
from metafleet.cli import main
results = {{}}
for name, argv in json.loads(sys.argv[1]).items():
    for limit in HTTP_LIMITS:
        os.environ.pop(limit, None)
    started = time.monotonic()
    code = main(argv)
    results[name] = {{"code": code, "seconds": time.monotonic() - started}}
    print("@@" + json.dumps({{name: results[name]}}), file=sys.stderr, flush=True)
print(json.dumps(results))
"""


@pytest.fixture
def silent_server():
    """Accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()
    for conn in held:
        conn.close()


class Refuses(http.server.BaseHTTPRequestHandler):
    """Answers every request 401, as a tracking server behind basic auth does for a wrong password."""

    def _refuse(self):
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Length", "12")
        self.end_headers()
        self.wfile.write(b"Unauthorized")

    do_GET = do_POST = do_PATCH = do_DELETE = _refuse

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_commands(uri: str, tmp_path: Path, limit_s: float) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_HTTP_", "MLFLOW_TRACKING_"))}
    env |= {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": PASSWORD,
            "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run([sys.executable, "-c", CHILD.format(timeout=TIMEOUT_S), json.dumps(COMMANDS)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as exc:
        finished = [line for line in (exc.stderr or b"").decode().splitlines() if line.startswith("@@")]
        pytest.fail(f"the commands did not return within {limit_s} s (finished: {finished}): a wait is unbounded")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def test_every_registry_command_gives_up_on_a_silent_server_within_the_bound(silent_server, tmp_path):
    results, err = run_commands(silent_server, tmp_path, limit_s=60)
    for name, result in results.items():
        assert result["code"] == 2, (name, err)
        assert result["seconds"] < TIMEOUT_S + 4, (name, result)  # MLflow's defaults: 120 s x 7 retries
    assert "Traceback" not in err
    messages = [line for line in err.splitlines() if line.startswith("fleet: error:")]
    assert len(messages) == len(COMMANDS)
    assert all(silent_server in line and "did not answer within 1 s" in line for line in messages), messages


def test_a_wrong_password_names_the_server_and_the_http_status(refusing_server, tmp_path):
    results, err = run_commands(refusing_server, tmp_path, limit_s=60)
    assert {name: r["code"] for name, r in results.items()} == {name: 2 for name in COMMANDS}, err
    messages = [line for line in err.splitlines() if line.startswith("fleet: error:")]
    assert len(messages) == len(COMMANDS) and "Traceback" not in err
    for line in messages:
        assert refusing_server in line and "HTTP 401" in line and "MLFLOW_TRACKING_PASSWORD" in line, line
        assert PASSWORD not in line  # the password itself is never printed
