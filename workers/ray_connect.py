"""Joining or starting Ray: the one place a process connects to a cluster.

`init_ray` connects to `RAY_ADDRESS` (a cluster, or the driver of `ray job submit`) or starts a private
local Ray bound to 127.0.0.1. Joining is bounded: Ray's own `ray.init(address=...)` retries an
unreachable GCS for many minutes, so the address is probed first and `RayConnectError` names the
address within `METAFLEET_RAY_CONNECT_TIMEOUT_S` seconds. Importing this module does not import Ray,
so the front door can catch `RayConnectError` cheaply.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_ENV = "METAFLEET_RAY_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 30.0  # a head that is still starting gets this long to open its GCS port
PROBE_RETRY_S = 0.5  # pause between connection attempts while the deadline has not passed


class RayConnectError(ConnectionError):
    """The Ray cluster at `address` could not be reached (or the address is not usable) within the timeout.

    Attributes: `address` (as given), `timeout_s`. The front door maps it to exit code 2.
    """

    def __init__(self, address: str, reason: str, timeout_s: float | None = None):
        self.address, self.timeout_s = address, timeout_s
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        super().__init__(
            f"cannot connect to the Ray cluster at {address!r} (RAY_ADDRESS or the given address){within}: {reason}. "
            "Start the cluster or fix the address; unset RAY_ADDRESS to start a private local Ray instead; "
            f"{CONNECT_TIMEOUT_ENV} sets how long to wait")


def connect_timeout_s() -> float:
    """Seconds to wait for a cluster's GCS port: `METAFLEET_RAY_CONNECT_TIMEOUT_S`, default 30."""
    text = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise RayConnectError(os.environ.get("RAY_ADDRESS", ""),
                              f"{CONNECT_TIMEOUT_ENV}={text!r} is not a number of seconds > 0")
    return value


WORKER_SETUP_HOOK = "metafleet.packages.pin_packages"  # a name, not an import: the front door's, run in each worker


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / RAY_ADDRESS if given (cluster or `ray job submit`), else start a
    private local Ray whose servers listen on 127.0.0.1 only, without the dashboard.

    Raises `RayConnectError` if the cluster cannot be reached within `connect_timeout_s()`.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":  # "local" asks for a new instance: ours, on loopback
        wait_for_cluster(address, connect_timeout_s())
        ray.init(address=address, logging_level=logging.WARNING)
        return
    loopback_only()
    # Token auth stays on (Ray 2.60's default for a local cluster, tested in tests/integration/test_ray_token.py);
    # its "Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt out" notice is a WARNING on every
    # run that would teach users to turn it off: keep that one logger to errors.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(
        address="local",  # a new instance, even if another Ray runs on this machine (else ray.init joins it)
        num_cpus=num_cpus,
        # Ray adds this driver's working directory to the workers' paths, ahead of the installed packages: a folder
        # there named like one of ours (a pulled ./policy) must not shadow it (metafleet/packages.py).
        runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK},
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        logging_level=logging.WARNING,
    )


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """Return once the GCS (or Ray Client server) that `address` names accepts TCP connections.

    Probes the host:port Ray itself would dial (for "auto": the last cluster started on this machine;
    Ray may replace 127.0.0.1 by the host's IP). Raises `RayConnectError` after `timeout_s` seconds.
    """
    host, port = _dial_target(address)
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(min(remaining, 5.0), 0.1)):
                return
        except OSError as exc:
            if time.monotonic() + PROBE_RETRY_S >= deadline:
                raise RayConnectError(address, f"nothing answers at {host}:{port} ({exc})", timeout_s) from exc
        time.sleep(PROBE_RETRY_S)


def _dial_target(address: str) -> tuple[str, int]:
    """The (host, port) a `ray.init(address=...)` would connect to first."""
    if address.startswith("ray://"):  # Ray Client: the client server's own port, no GCS lookup
        parts = urlsplit(address)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise RayConnectError(address, "expected ray://HOST:PORT")
        return parts.hostname, port
    if address.startswith(("http://", "https://")):
        raise RayConnectError(address, "that is a dashboard address (for `ray job submit`); a driver joins the GCS: "
                                       "HOST:PORT (port 6379 by default) or 'auto'")
    from ray._private.services import canonicalize_bootstrap_address

    try:
        target = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:  # "auto" with no cluster here; not HOST:PORT
        raise RayConnectError(address, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from exc
    if target is None:  # "local" (init_ray starts a new instance for it instead of calling this)
        raise RayConnectError(address, "it names no cluster")
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def loopback_only() -> None:
    """Make a local Ray use 127.0.0.1 for every server it starts.

    On Linux, Ray turns "127.0.0.1" into the primary interface's address and its GCS and raylet
    listen on all interfaces. With cluster mode off (what Ray does on macOS/Windows), the node
    address resolves to loopback, for this process (the constant) and for every Ray process it
    spawns (the environment variable).
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
