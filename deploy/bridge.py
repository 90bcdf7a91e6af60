"""A TCP bridge for real robots: `RobotServer` exposes a `Robot`, `RemoteRobot` drives it from afar.

Wire protocol v1 (spec in docs/robots.md): each frame is a 4-byte big-endian unsigned length followed by
that many bytes of a UTF-8 JSON object, at most ``MAX_FRAME`` bytes. The client opens with
``{"v": 1, "op": "hello", "token": ...}``; then ``reset`` / ``observe`` / ``act`` / ``close`` requests,
each answered by one ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}`` frame.

The server validates every request before the robot sees it; a bad frame (oversized, truncated, not a
JSON object) or anything but a hello first closes that connection, and the server keeps serving. One
client drives the robot at a time. The token travels in clear text: keep the server on 127.0.0.1 or a
trusted network (an SSH tunnel or VPN), as ``fleet serve-robot`` does by default.

Usage::

    server = RobotServer(SimRobot(), token="s3cret").start()
    robot = RemoteRobot(*server.address, token="s3cret")
    obs = robot.reset(seed=0)
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import socket
import struct
import threading

import numpy as np

from deploy.robot import Robot, Step

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
HEADER = struct.Struct(">I")
MAX_SEED = 2**63 - 1
log = logging.getLogger(__name__)


class ProtocolError(ConnectionError):
    """A frame that breaks the protocol: oversized, truncated, not a UTF-8 JSON object."""


class RobotAuthError(ConnectionError):
    """The server refused the hello (wrong token or protocol version, or the robot is busy)."""


class RobotCommandError(RuntimeError):
    """The server answered a request with ``{"ok": false, "error": ...}``."""


# ----------------------------------------------------------------------------------------- frames
def encode_frame(message: dict) -> bytes:
    """Length prefix + compact JSON (non-finite floats are not JSON: callers send them as null)."""
    payload = json.dumps(message, allow_nan=False, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds MAX_FRAME ({MAX_FRAME})")
    return HEADER.pack(len(payload)) + payload


def send_frame(sock: socket.socket, message: dict) -> None:
    sock.sendall(encode_frame(message))


def recv_frame(sock: socket.socket) -> dict | None:
    """Read one frame; ``None`` on a clean close between frames; :class:`ProtocolError` on a bad one."""
    header = _recv_exact(sock, HEADER.size, allow_eof=True)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:  # refuse before reading: a length prefix must not make us buffer a gigabyte
        raise ProtocolError(f"declared frame length {length} exceeds MAX_FRAME ({MAX_FRAME})")
    payload = _recv_exact(sock, length, allow_eof=False)
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame holds a JSON {type(message).__name__}, expected an object")
    return message


def _recv_exact(sock: socket.socket, n: int, allow_eof: bool) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 65536))
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise ProtocolError(f"connection closed inside a frame ({got} of {n} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------ json values
def encode_array(values: np.ndarray) -> list:
    """Floats for JSON: non-finite entries become null (JSON has no NaN)."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).ravel()]


def decode_array(values, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_array` (null -> NaN), checked against ``shape``."""
    if not isinstance(values, list) or not all(_is_number(v) or v is None for v in values):
        raise ProtocolError(f"expected a list of numbers, got {str(values)[:80]}")
    try:
        arr = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float32)
    except OverflowError:
        raise ProtocolError(f"expected floats, got an integer out of range in {str(values)[:80]}") from None
    if arr.size != math.prod(shape):
        raise ProtocolError(f"expected {math.prod(shape)} values, got {arr.size}")
    return arr.reshape(shape)


def json_safe(value, depth: int = 0):
    """A JSON-serialisable copy of ``value`` (numpy -> python, non-finite -> None, unknown -> str)."""
    if depth > 20:
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v, depth + 1) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    if not _is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


# ------------------------------------------------------------------------------------------ server
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
        if not all(_is_finite_number(a) for a in action):
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


# ------------------------------------------------------------------------------------------ client
class RemoteRobot:
    """A `Robot` served by a :class:`RobotServer` (``fleet serve-robot``) at ``host:port``.

    Raises :class:`RobotAuthError` when the hello is refused, ``OSError`` when nothing listens there.
    """

    def __init__(self, host: str, port: int, token: str, timeout: float = 10.0):
        self.address = (host, port)
        self._sock: socket.socket | None = socket.create_connection((host, port), timeout=timeout)
        try:
            reply = self._request({"v": PROTOCOL_VERSION, "op": "hello", "token": token}, auth=True)
            self.observation_shape = tuple(int(n) for n in reply["observation_shape"])
            self.action_low = np.asarray(reply["action_low"], dtype=np.float32)
            self.action_high = np.asarray(reply["action_high"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            self.close()
            raise ProtocolError(f"robot server at {host}:{port} sent a malformed hello reply: {exc}") from None
        except BaseException:
            self.close()
            raise

    def reset(self, task: dict | None = None, seed: int | None = None) -> np.ndarray:
        reply = self._request({"op": "reset", "task": task, "seed": seed})
        return decode_array(reply.get("observation"), self.observation_shape)

    def observe(self) -> np.ndarray:
        return decode_array(self._request({"op": "observe"}).get("observation"), self.observation_shape)

    def act(self, action: np.ndarray) -> Step:
        reply = self._request({"op": "act", "action": encode_array(action)})
        reward, info = reply.get("reward"), reply.get("info")
        if not (reward is None or _is_number(reward)):
            raise ProtocolError(f"act reply holds a non-numeric reward {str(reward)[:40]}")
        return Step(decode_array(reply.get("observation"), self.observation_shape),
                    math.nan if reward is None else float(reward), reply.get("done") is True,
                    info if isinstance(info, dict) else {})

    def close(self) -> None:
        if self._sock is None:
            return
        sock, self._sock = self._sock, None
        with contextlib.suppress(OSError, ProtocolError):
            send_frame(sock, {"op": "close"})
            recv_frame(sock)
        sock.close()

    def _request(self, message: dict, auth: bool = False) -> dict:
        if self._sock is None:
            raise ConnectionError(f"robot {self.address[0]}:{self.address[1]} is closed")
        send_frame(self._sock, message)
        reply = recv_frame(self._sock)
        if reply is None:
            raise ProtocolError(f"robot server at {self.address[0]}:{self.address[1]} closed the connection")
        if reply.get("ok") is not True:
            error = str(reply.get("error", "no error message"))
            raise RobotAuthError(error) if auth else RobotCommandError(error)
        return reply
