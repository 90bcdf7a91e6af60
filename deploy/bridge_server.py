"""`RobotServer`: exposes a `Robot` over TCP (wire format: :mod:`deploy.wire`) to authenticated clients.

The server validates every request before the robot sees it; a bad frame (oversized, truncated, not a
JSON object) or anything but a hello first closes that connection, and the server keeps serving. One
client drives the robot at a time. The token travels in clear text: keep the server on 127.0.0.1 or a
trusted network (an SSH tunnel or VPN), as ``fleet serve-robot`` does by default.

Usage::

    server = RobotServer(my_robot, token="s3cret").start()      # any object of the Robot protocol
    ...
    server.stop()
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import threading

import numpy as np

from deploy.robot import Robot
from deploy.wire import (
    MAX_SEED,
    PROTOCOL_VERSION,
    ProtocolError,
    encode_array,
    is_finite_number,
    json_safe,
    recv_frame,
    send_frame,
)

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A well-framed request with invalid content: answered with an error, the connection stays."""


class RobotServer:
    """Serve one `Robot` over TCP to authenticated clients, one driving it at a time.

    Args:
        robot: The robot to expose (the server never closes it).
        token: Shared secret every client must present in its hello (non-empty).
        host, port: Where to listen (default loopback; port 0 picks a free one, see ``address``).
        idle_timeout: Seconds a connected client may stay silent before it is dropped.
        hello_timeout: Seconds a new connection has to send its hello.
        busy_wait: Seconds an authenticated client waits for the previous one to leave.
        max_connections: Concurrent connections; more are closed at once.
    """

    def __init__(self, robot: Robot, token: str, host: str = "127.0.0.1", port: int = 0, *,
                 idle_timeout: float = 60.0, hello_timeout: float = 5.0, busy_wait: float = 5.0,
                 max_connections: int = 8):
        if not isinstance(token, str) or not token:
            raise ValueError("RobotServer needs a non-empty token")
        self.robot = robot
        self._token = token.encode("utf-8")
        self.idle_timeout, self.hello_timeout, self.busy_wait = idle_timeout, hello_timeout, busy_wait
        self._obs_shape = tuple(int(n) for n in robot.observation_shape)
        self._low = np.asarray(robot.action_low, dtype=np.float64).ravel()
        self._high = np.asarray(robot.action_high, dtype=np.float64).ravel()
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)  # poll, so stop() ends the accept loop without closing under it
        self._session = threading.Lock()  # held by the connection that drives the robot
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stats_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"accepted": 0, "rejected_auth": 0, "bad_frames": 0, "commands": 0, "errors": 0,
                      "timeouts": 0, "refused_full": 0}

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> RobotServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="robot-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Accept connections until :meth:`stop`; each is handled in its own thread."""
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            if not self._slots.acquire(blocking=False):
                self._count("refused_full")
                conn.close()
                continue
            self._count("accepted")
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        """Stop accepting, drop every connection, wait for the accept loop (idempotent)."""
        self._stopping.set()
        with contextlib.suppress(OSError):  # wakes a blocked accept() at once on Linux; else the poll ends it
            self._listener.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._stats_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        # Wait (bounded) for a robot call in flight, so the caller may close the robot right after.
        if self._session.acquire(timeout=5.0):
            self._session.release()

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    # ------------------------------------------------------------------------------ connections
    def _serve_connection(self, conn: socket.socket) -> None:
        with self._stats_lock:
            self._connections.add(conn)
        try:
            conn.settimeout(self.hello_timeout)
            if self._handshake(conn):
                try:
                    conn.settimeout(self.idle_timeout)
                    self._command_loop(conn)
                finally:
                    self._session.release()
        except ProtocolError as exc:
            self._count("bad_frames")
            log.info("robot server: closing connection: %s", exc)
        except TimeoutError:
            self._count("timeouts")
        except OSError:
            pass  # the client went away mid-reply
        except Exception:  # never let one connection take the server down
            log.exception("robot server: unexpected error; closing the connection")
        finally:
            with self._stats_lock:
                self._connections.discard(conn)
            conn.close()
            self._slots.release()

    def _handshake(self, conn: socket.socket) -> bool:
        """True with the session lock held once the client is authenticated; False: close."""
        hello = recv_frame(conn)
        if hello is None or hello.get("op") != "hello":
            return False  # nothing but a hello opens a session: close without a word
        token = hello.get("token")
        if hello.get("v") != PROTOCOL_VERSION:
            error = f"unsupported protocol version {hello.get('v')!r}; this server speaks {PROTOCOL_VERSION}"
        elif not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8"), self._token):
            error = "authentication failed"
        else:
            error = None
        if error is not None:
            self._count("rejected_auth")
            send_frame(conn, {"ok": False, "error": error})
            return False
        if not self._session.acquire(timeout=self.busy_wait):
            send_frame(conn, {"ok": False, "error": "robot busy: another client is connected"})
            return False
        try:
            send_frame(conn, {"ok": True, "v": PROTOCOL_VERSION, "observation_shape": list(self._obs_shape),
                              "action_low": self._low.tolist(), "action_high": self._high.tolist()})
        except BaseException:
            self._session.release()
            raise
        return True

    def _command_loop(self, conn: socket.socket) -> None:
        while not self._stopping.is_set():
            request = recv_frame(conn)
            if request is None:
                return
            self._count("commands")
            if request.get("op") == "close" and set(request) <= {"op", "v"}:
                send_frame(conn, {"ok": True})
                return
            try:
                reply = self._execute(request)
            except RequestError as exc:
                reply = {"ok": False, "error": str(exc)}
            except Exception as exc:  # the robot's own failure: report it, keep the connection
                log.warning("robot server: robot raised %r", exc)
                reply = {"ok": False, "error": f"robot error: {type(exc).__name__}: {exc}"}
            if not reply["ok"]:
                self._count("errors")
            send_frame(conn, reply)

    def _execute(self, request: dict) -> dict:
        """Validate ``request`` completely, then (and only then) call the robot."""
        op = request.get("op")
        if "v" in request and request["v"] != PROTOCOL_VERSION:
            raise RequestError(f"unsupported protocol version {request['v']!r}; expected {PROTOCOL_VERSION}")
        fields = {"reset": {"task", "seed"}, "observe": set(), "act": {"action"}, "close": set()}
        if op not in fields:
            raise RequestError(f"unknown op {op!r}; expected one of {sorted(fields)}")
        unknown = sorted(set(request) - fields[op] - {"op", "v"})
        if unknown:
            raise RequestError(f"unknown field(s) {unknown} for op {op!r}")
        if op == "reset":
            task, seed = _check_task(request.get("task")), _check_seed(request.get("seed"))
            return {"ok": True, "observation": encode_array(self.robot.reset(task=task, seed=seed))}
        if op == "observe":
            return {"ok": True, "observation": encode_array(self.robot.observe())}
        action, clipped = self._check_action(request.get("action"))
        step = self.robot.act(action)
        info = json_safe(step.info) if isinstance(step.info, dict) else {}
        if clipped:
            info["clipped_by_server"] = clipped
        return {"ok": True, "observation": encode_array(step.observation), "reward": json_safe(float(step.reward)),
                "done": bool(step.done), "info": info}

    def _check_action(self, action) -> tuple[np.ndarray, int]:
        dim = self._low.size
        if not isinstance(action, list) or len(action) != dim:
            raise RequestError(f"action must be a list of {dim} numbers, got {json.dumps(action)[:80]}")
        if not all(is_finite_number(a) for a in action):
            raise RequestError(f"action entries must be finite numbers, got {json.dumps(action)[:80]}")
        arr = np.asarray(action, dtype=np.float64)
        # Clip, as the simulator does: the robot never sees an out-of-bounds command, and raw exploration
        # samples (as adaptation sends) still work; the reply's info says how many entries were clipped.
        bounded = np.clip(arr, self._low, self._high)
        return bounded.astype(np.float32), int(np.count_nonzero(bounded != arr))


def _check_task(task) -> dict | None:
    if task is not None and not isinstance(task, dict):
        raise RequestError(f"task must be a JSON object or null, got {type(task).__name__}")
    return task


def _check_seed(seed) -> int | None:
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        raise RequestError(f"seed must be an integer in [0, 2**63-1] or null, got {json.dumps(seed)[:40]}")
    return seed
