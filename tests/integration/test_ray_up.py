"""`ray up` / `ray submit` / `ray down` of cluster/local.yaml, for real, on a one-node cluster over 127.0.0.1.

The node is this machine, reached by SSH like any on-prem machine: a throwaway sshd (its own config, host
key and client key in tmp; root login by that key only; 127.0.0.1 on a free port). The cluster YAML is
cluster/local.yaml as shipped, with only these substituted: cluster name, head IP (no workers), SSH user
and key, and ports (the fixed 6379 / 8265 / 5000 become free ports, and `ray start --head` gets free
ports for the listeners it would otherwise open on fixed defaults) so that it cannot collide with other
Ray clusters on the machine. Ray 2.60's launcher has no SSH port setting; the launcher's `ssh` is a
wrapper that adds `-p PORT` (what `Host`/`Port` in ~/.ssh/config does for a user).

What makes this machine a separate "node" (the equivalent of choosing a machine image):
- sshd runs in its own PID namespace (`unshare --pid --mount-proc`): the `ray stop` that the YAML's start
  commands and `ray down` run sees only the node's processes (on the shared machine it would kill every
  Ray of the user), and killing the namespace's first process ends everything started on the node.
- the node's HOME is a tmp dir (sshd `SetEnv`): ~/venv, ~/.bashrc, ~/metafleet, ~/mlflow land there.
  Its ~/.bash_profile puts this interpreter first on PATH and ~/venv is pre-made with
  --system-site-packages: the node's Python has the pinned packages, so the YAML's pip lines find them
  installed (no download; this machine has no internet); `pip install -e ~/metafleet` really installs
  the synced copy.
- RAY_TMPDIR (own Ray temp dir, so `address="auto"` finds only this cluster) and Ray's single-node mode
  (every listener on 127.0.0.1, see tests/integration/test_ray_job.py).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import importlib.util
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fakes import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 240
SUBMIT_TIMEOUT_S = 300
DOWN_TIMEOUT_S = 90
SSHD_START_TIMEOUT_S = 20
PY_BIN = Path(sys.executable).parent
# The fixed ports in cluster/local.yaml, each replaced by a free one; the counts are how often the
# YAML's commands name them (a change there must show up here, not pass unnoticed).
FIXED_PORTS = {"6379": 1, "8265": 1, "5000": 3}
# Listeners `ray start --head` opens on fixed default ports unless told otherwise.
EXTRA_HEAD_PORTS = ("--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                    "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
                    "--object-manager-port")


def _missing_tools() -> str | None:
    """Why this machine cannot host the test, or None."""
    for tool in ("sshd", "ssh", "ssh-keygen", "rsync", "unshare"):
        if not (shutil.which(tool) or Path("/usr/sbin", tool).exists()):
            return f"`{tool}` is not installed (apt-get install -y openssh-server rsync)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot make a PID namespace (`unshare --pid --fork --mount-proc`): {probe.stderr.decode()[-200:]}"
    return None


def _see_these_packages(venv: Path) -> None:
    """A .pth in `venv` appending this interpreter's site-packages (the node's Python has its pinned packages)."""
    import site

    [target] = venv.glob("lib/python*/site-packages")
    _write(target / "_metafleet_node_packages.pth", "".join(f"{p}\n" for p in site.getsitepackages()))


def _sshd_path() -> str:
    return shutil.which("sshd") or "/usr/sbin/sshd"


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _ipv4(address: str) -> str:
    """'::ffff:127.0.0.1' (an IPv4 socket seen through a dual-stack one) -> '127.0.0.1'; others as they are."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


@dataclass
class Node:
    """The SSH-reachable node: its port, the client key, its HOME and its Ray temp dir."""

    port: int
    key: Path
    home: Path
    base: Path
    pid: int  # `unshare`, the parent of everything that runs on the node
    cluster_name: str

    def listeners(self) -> set[tuple[str, int]]:
        """(address, port) of every TCP socket a process of the node listens on."""
        import psutil

        found = set()
        for proc in psutil.Process(self.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found |= {(_ipv4(c.laddr.ip), c.laddr.port) for c in proc.net_connections("tcp")
                          if c.status == psutil.CONN_LISTEN}
        return found


def _start_sshd(base: Path, port: int, home: Path, ray_tmp: Path) -> subprocess.Popen:
    """sshd on 127.0.0.1:`port` in a new PID namespace; root login with `base/id_node` only."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "id_node")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_key")], check=True)
    authorized = _write(base / "authorized_keys", (base / "id_node.pub").read_text(), 0o600)
    config = _write(base / "sshd_config", "\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {base / 'host_key'}", f"PidFile {base / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "AllowTcpForwarding yes", "X11Forwarding no", "LogLevel VERBOSE",
        f"SetEnv HOME={home} RAY_TMPDIR={ray_tmp} RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0", ""]))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir (made at boot normally)
    with open(base / "sshd.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", _sshd_path(), "-D", "-e", "-f", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_for_ssh(node: Node, sshd: subprocess.Popen) -> None:
    command = ["ssh", "-p", str(node.port), "-i", str(node.key), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
               "root@127.0.0.1", "echo $HOME"]
    deadline = time.monotonic() + SSHD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if sshd.poll() is not None:
            pytest.fail(f"sshd exited with {sshd.returncode}:\n{(node.base / 'sshd.log').read_text()[-3000:]}")
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            assert done.stdout.strip() == str(node.home), f"sshd did not set the node's HOME: {done.stdout!r}"
            return
        time.sleep(0.5)
    pytest.fail(f"ssh to 127.0.0.1:{node.port} failed:\n{done.stderr[-2000:]}\n{(node.base / 'sshd.log').read_text()}")


def _kill_namespace(sshd: subprocess.Popen) -> None:
    """SIGKILL unshare's group; with --kill-child its child, the namespace's PID 1, dies and takes every
    process of the node (Ray, MLflow, SSH sessions) with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sshd.pid, signal.SIGKILL)
    sshd.wait(timeout=30)


@pytest.fixture
def node():
    """This machine as an SSH node of its own (see the module docstring); everything ends at teardown."""
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="rayup-", dir="/tmp"))  # short: Ray's unix sockets live under it
    home, ray_tmp, name = base / "home", base / "rt", f"metafleet-test-{secrets.token_hex(3)}"
    sshd = None
    try:
        home.mkdir()
        ray_tmp.mkdir()
        _write(home / ".bash_profile", f'export PATH="{PY_BIN}:$PATH"\n')  # the node's Python: this one
        _write(home / ".bashrc", "")
        venv = home / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        # --system-site-packages reaches the *base* interpreter's packages; when this one is itself a venv (CI's),
        # its packages (torch included) must be visible too, or the YAML's pip lines go to the network
        _see_these_packages(venv)
        # The venv's own (older, bundled) setuptools would shadow the node's and make pip fetch one.
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", "setuptools"], check=True)
        port = free_ports(1)[0]
        sshd = _start_sshd(base, port, home, ray_tmp)
        spec = Node(port, base / "id_node", home, base, sshd.pid, name)
        _wait_for_ssh(spec, sshd)
        yield spec
    finally:
        if sshd is not None:
            _kill_namespace(sshd)
            _remove_ssh_control_dir(name)
        shutil.rmtree(base, ignore_errors=True)


def cluster_yaml(node: Node, name: str, ports: dict[str, int], extra_ports: list[int]) -> dict:
    """cluster/local.yaml with the IPs, user, key and ports substituted (nothing else)."""
    config = yaml.safe_load((REPO_ROOT / "cluster" / "local.yaml").read_text())
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["min_workers"] = config["max_workers"] = 0  # as many workers as worker_ips
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(node.key)}
    keys = ("setup_commands", "head_setup_commands", "head_start_ray_commands")
    for fixed, count in FIXED_PORTS.items():
        found = sum(len(re.findall(rf"\b{fixed}\b", cmd)) for key in keys for cmd in config[key])
        assert found == count, f"cluster/local.yaml names port {fixed} {found} times, the test expects {count}"
    for key in keys:
        config[key] = [re.sub(r"\b(6379|8265|5000)\b", lambda m: str(ports[m.group(1)]), cmd) for cmd in config[key]]
    starts = [i for i, cmd in enumerate(config["head_start_ray_commands"]) if "ray start --head" in cmd]
    assert len(starts) == 1, config["head_start_ray_commands"]
    flags = " ".join(f"{flag}={port}" for flag, port in zip(EXTRA_HEAD_PORTS, extra_ports))
    config["head_start_ray_commands"][starts[0]] += " " + flags
    return config


def _ray(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    ray_cli = PY_BIN / "ray"
    command = [str(ray_cli) if ray_cli.exists() else "ray", *args]
    try:
        return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"`ray {' '.join(args)}` still running after {timeout}s:\n{out[-6000:]}")


def _client_env(base: Path, port: int) -> dict:
    """The launcher's environment: its own HOME (holding the token that file_mounts copy to the node),
    its own temp dirs (the local provider's state file, `ray down`'s config cache), and an `ssh` that
    dials `port`."""
    client_home, client_tmp, wrappers = base / "client", base / "ct", base / "bin"
    for path in (client_home / ".ray", client_tmp, wrappers):
        path.mkdir(parents=True)
    _write(client_home / ".ray" / "auth_token", secrets.token_hex(32), 0o600)
    _write(wrappers / "ssh", f'#!/bin/sh\nexec {shutil.which("ssh")} -p {port} "$@"\n', 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(HOME=str(client_home), RAY_TMPDIR=str(client_tmp), TMPDIR=str(client_tmp),
               PATH=f"{wrappers}:{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
@pytest.mark.integration
def test_ray_up_submit_down_local_provider(node):
    gcs, dashboard, mlflow_port, *extra = free_ports(3 + len(EXTRA_HEAD_PORTS))
    config = cluster_yaml(node, node.cluster_name, {"6379": gcs, "8265": dashboard, "5000": mlflow_port}, extra)
    config_path = node.base / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = _client_env(node.base, node.port)
    common = ["--no-config-cache", "--log-style", "record"]
    try:
        started = time.monotonic()
        up = _ray(["up", "-y", "--disable-usage-stats", *common, str(config_path)], env, UP_TIMEOUT_S)
        print(f"ray up: {time.monotonic() - started:.0f} s")
        assert up.returncode == 0, f"ray up failed:\n{(up.stdout + up.stderr)[-8000:]}\n{_node_logs(node)}"
        started = time.monotonic()
        run_id = _submit_smoke(node, config_path, env, common, gcs, mlflow_port)
        print(f"ray submit: {time.monotonic() - started:.0f} s")
        _check_tracking_store(node, run_id, mlflow_port)
        listeners = node.listeners()
        expected = {("127.0.0.1", gcs), ("127.0.0.1", dashboard), ("127.0.0.1", mlflow_port)}
        assert expected <= listeners, f"missing {expected - listeners} in {sorted(listeners)}"
        assert {ip for ip, _ in listeners} == {"127.0.0.1"}, f"the node listens beyond loopback: {listeners}"
    finally:
        started = time.monotonic()
        down = _ray_down(config_path, env, common)  # also after a failure; the node fixture ends the rest
        print(f"ray down: {time.monotonic() - started:.0f} s")
    assert down.returncode == 0, f"ray down failed:\n{(down.stdout + down.stderr)[-4000:]}"


def _node_logs(node: Node) -> str:
    """The tails of the node's MLflow server and sshd logs, for failure messages."""
    logs = [node.home / "mlflow" / "server.log", node.base / "sshd.log"]
    return "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.is_file())


def _submit_smoke(node: Node, config_path: Path, env: dict, common: list[str], gcs: int, mlflow_port: int) -> str:
    """`ray submit` of the smoke training on 1 Ray worker; returns the MLflow run id it printed."""
    submit = _ray(["submit", *common, str(config_path), "cluster/submit_train.py", "--", "configs/smoke.yaml",
                   "--set", "train.iterations=1", "--set", "workers.backend=ray", "--set", "workers.num_workers=1"],
                  env, SUBMIT_TIMEOUT_S)
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, f"ray submit failed:\n{log[-8000:]}\n{_node_logs(node)}"
    assert f"joined the Ray cluster at 127.0.0.1:{gcs}" in log, log[-6000:]
    assert f"tracking to http://127.0.0.1:{mlflow_port}" in log, log[-6000:]  # the YAML's ~/.bashrc export
    assert "ray workers=1" in log and "registered models:/smoke/1" in log, log[-6000:]
    return re.search(r"MLflow run ([0-9a-f]{32})", log).group(1)


def _check_tracking_store(node: Node, run_id: str, mlflow_port: int) -> None:
    """The run and the registered model are in the head's MLflow server (sqlite under the node's ~/mlflow),
    and the job ran the copy of the repository that `ray up` synced and installed."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    uri = f"http://127.0.0.1:{mlflow_port}"
    assert (node.home / "mlflow" / "mlflow.db").is_file()
    client = MlflowClient(uri, registry_uri=uri)  # not a registry another test set process-wide
    assert client.get_run(run_id).info.status == "FINISHED"
    version = client.get_model_version("smoke", "1")
    assert version.run_id == run_id and version.status == "READY" and version.tags.get("weights_sha256")
    assert str(client.get_model_version_by_alias("smoke", "candidate").version) == "1"
    assert version.source.startswith("mlflow-artifacts:/"), version.source  # stored by the server, not the job
    pulled = Path(download_artifacts(artifact_uri=version.source, dst_path=str(node.base / "pulled"),
                                     tracking_uri=uri))
    assert (pulled / "manifest.json").is_file() and (pulled / "weights.safetensors").is_file()
    synced = node.home / "metafleet"
    assert (synced / "metafleet" / "cli.py").is_file() and not (synced / "mlflow.db").exists()
    editable = " ".join(p.read_text(errors="replace") for p in (node.home / "venv").glob(
        "lib/python*/site-packages/*metafleet*") if p.is_file())
    assert str(synced) in editable, f"~/venv has no editable install of {synced}"


def _remove_ssh_control_dir(cluster_name: str) -> None:
    """The launcher's SSH ControlPath dir for this cluster (/tmp/ray_ssh_<user>/<cluster>, hashed), once its
    ssh master (ControlPersist) has gone with the node's connections."""
    digest = [hashlib.sha256(text.encode()).hexdigest()[:10] for text in (getpass.getuser(), cluster_name)]
    path = Path("/tmp", f"ray_ssh_{digest[0]}", digest[1])
    for _ in range(20):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # the master's socket is still there
            time.sleep(0.5)


def _ray_down(config_path: Path, env: dict, common: list[str]) -> subprocess.CompletedProcess:
    """`ray down -y`, never raising (it runs in a finally); a timeout reads as a failed run."""
    command = [str(PY_BIN / "ray"), "down", "-y", *common[1:], str(config_path)]  # down has no --no-config-cache
    try:
        return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=DOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"still running after {DOWN_TIMEOUT_S}s")


def _submit_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """cluster/submit_train.py run as `ray submit` runs it (`python SCRIPT ARGS`), here, with a timeout."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "cluster" / "submit_train.py"), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_submit_script_names_a_missing_project_dir(tmp_path):
    done = _submit_script("--project-dir", str(tmp_path / "nowhere"), "configs/smoke.yaml")
    assert done.returncode == 2
    assert "--project-dir" in done.stderr and "nowhere" in done.stderr and "ray up" in done.stderr


def test_submit_script_stops_when_the_tracking_server_does_not_answer():
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    done = _submit_script("--project-dir", str(REPO_ROOT), "--tracking-uri", f"http://127.0.0.1:{port}",
                          "--wait-s", "1", "configs/smoke.yaml", env=env)
    assert done.returncode == 2
    assert f"http://127.0.0.1:{port} did not answer within 1 s" in done.stderr


def test_submit_script_passes_the_rest_to_fleet_train():
    spec = importlib.util.spec_from_file_location("submit_train", REPO_ROOT / "cluster" / "submit_train.py")
    submit_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit_train)
    options, rest = submit_train.parse_args(["--tracking-uri", "sqlite:///x.db", "configs/reach.yaml",
                                             "--set", "train.iterations=2", "--resume", "abc"])
    assert options.tracking_uri == "sqlite:///x.db" and options.ray_address == "auto"
    assert rest == ["configs/reach.yaml", "--set", "train.iterations=2", "--resume", "abc"]
