"""A real `mlflow server` on 127.0.0.1 for fault tests: started in its own process group, stopped with it."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def start_server(port: int, root: Path) -> subprocess.Popen:
    with open(root / "server.log", "ab") as server_log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root}/db.sqlite", "--artifacts-destination", str(root / "art")],
            stdout=subprocess.DEVNULL, stderr=server_log, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
