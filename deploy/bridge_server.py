"""`RobotServer`: exposes a `Robot` over TCP (wire format: :mod:`deploy.wire`) to clients holding the key.

Trust, in order: a new connection must finish the challenge-response hello within ``hello_timeout``
(at most ``max_unauthenticated`` connections may be that far at once); the key never travels, and the
server proves it holds the key too. After that every frame is sealed (sequence number + HMAC); any
malformed, replayed, reordered or modified frame gets an error frame and ends the session. A session
must deliver a whole frame (a request or a keepalive) within every ``keepalive_timeout``; when it does
not, or disconnects, or ends in any way, the server puts the robot in a hold (``robot.hold()``). Requests
reach the robot only validated, paced and through the safety layer (:mod:`deploy.bridge_commands`).
One client drives the robot at a time. The frames are authenticated, not encrypted: observations and
actions are readable on the network.

Usage::

    server = RobotServer(my_robot, token="s3cret").start()      # any object of the Robot protocol
    ...
    server.stop()
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from deploy.bridge_commands import RequestError, RobotCommands, check_request
from deploy.robot import Robot
from deploy.safety import SafetyConfig
from deploy.wire import (
    PROTOCOL_VERSION,
    Channel,
    FrameAuthError,
    ProtocolError,
    check_nonce,
    client_proof,
    new_nonce,
    proof_matches,
    recv_frame,
    send_frame,
    server_proof,
    session_key,
    shared_key,
)

log = logging.getLogger(__name__)
HELLO_FIELDS, AUTH_FIELDS = {"v", "op", "nonce"}, {"op", "proof"}


class Refused(Exception):
    """A handshake the server refuses with ``str(exc)`` as the (plain) error frame."""


class RobotServer:
    """Serve one `Robot` over TCP to clients holding the shared key, one driving it at a time.

    Args:
        robot: The robot to expose (the server never closes it); it must have ``hold()``.
        token: The shared secret, used as the HMAC key (non-empty; never sent over the wire).
        host, port: Where to listen (default loopback; port 0 picks a free one, see ``address``).
        keepalive_timeout: Seconds a session may go without delivering a whole frame (requests and
            keepalives count) before the robot is held and the session closed; clients send keepalives
            every third of it.
        hello_timeout: Seconds a new connection has to complete the whole handshake.
        busy_wait: Seconds an authenticated client waits for the previous one to leave.
        max_connections: Concurrent connections; more are closed at once.
        max_unauthenticated: Concurrent connections still in the handshake; more are closed at once.
        max_command_rate: Robot commands (reset/observe/act) a second; faster ones wait. None: unpaced.
        safety: The safety layer's config for every action (default ``SafetyConfig()``, the runtime's).
    """

    def __init__(self, robot: Robot, token: str, host: str = "127.0.0.1", port: int = 0, *,
                 keepalive_timeout: float = 1.0, hello_timeout: float = 3.0, busy_wait: float = 5.0,
                 max_connections: int = 8, max_unauthenticated: int = 4, max_command_rate: float | None = 100.0,
                 safety: SafetyConfig | None = None):
        self._key = shared_key(token)
        self.robot = robot
        self.commands = RobotCommands(robot, safety, max_command_rate)
        self.keepalive_timeout, self.hello_timeout, self.busy_wait = keepalive_timeout, hello_timeout, busy_wait
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)  # poll, so stop() ends the accept loop without closing under it
        self._session = threading.Lock()  # held by the connection that drives the robot
        self._slots = threading.BoundedSemaphore(max_connections)
        self._unauthenticated = threading.BoundedSemaphore(max_unauthenticated)
        self._stats_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"accepted": 0, "rejected_auth": 0, "bad_frames": 0, "commands": 0, "errors": 0,
                      "timeouts": 0, "refused_full": 0, "refused_unauthenticated": 0, "keepalives": 0,
                      "holds": 0, "paced": 0, "internal_errors": 0}

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
            if not self._unauthenticated.acquire(blocking=False):  # slow handshakes cannot pile up
                self._slots.release()
                self._count("refused_unauthenticated")
                conn.close()
                continue
            self._count("accepted")
            threading.Thread(target=self._serve_connection, args=(conn, time.monotonic()), daemon=True).start()

    def stop(self) -> None:
        """Stop accepting, drop every connection (each session holds the robot), wait (idempotent)."""
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
        # Wait (bounded) for a robot call and the closing hold, so the caller may close the robot right after.
        if self._session.acquire(timeout=5.0):
            self._session.release()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    # ------------------------------------------------------------------------------ connections
    def _serve_connection(self, conn: socket.socket, accepted_at: float) -> None:
        with self._stats_lock:
            self._connections.add(conn)
        try:
            opened = self._authenticate(conn, accepted_at + self.hello_timeout)
            if opened is not None and self._open_session(conn, *opened):
                self._run_session(conn, opened[0])
        except OSError:
            pass  # the client went away
        except Exception:  # never let one connection take the server down
            self._count("internal_errors")
            log.exception("robot server: unexpected error; closing the connection")
        finally:
            with self._stats_lock:
                self._connections.discard(conn)
            conn.close()
            self._slots.release()

    def _authenticate(self, conn: socket.socket, deadline: float) -> tuple[Channel, str] | None:
        """:meth:`_handshake`, its refusals answered; the unauthenticated slot is free again after it."""
        try:
            return self._handshake(conn, deadline)
        except Refused as exc:
            self._refuse(conn, str(exc))
        except ProtocolError as exc:
            self._count("bad_frames")
            self._refuse(conn, f"malformed frame: {exc}")
        except TimeoutError:
            self._count("timeouts")
            self._refuse(conn, f"hello deadline passed ({self.hello_timeout:g} s)")
        finally:
            self._unauthenticated.release()
        return None

    def _refuse(self, conn: socket.socket, error: str) -> None:
        """Best effort: a plain error frame, then the caller closes."""
        with contextlib.suppress(OSError):
            conn.settimeout(1.0)
            send_frame(conn, {"ok": False, "error": error})

    def _handshake(self, conn: socket.socket, deadline: float) -> tuple[Channel, str] | None:
        """A sealed channel and the server's proof for a client that proved the key; None: it left."""
        hello = recv_frame(conn, deadline)
        if hello is None:
            return None
        if hello.get("op") != "hello":
            raise Refused("expected a hello first")
        if "v" not in hello or type(hello["v"]) is not int or hello["v"] != PROTOCOL_VERSION:
            self._count("rejected_auth")
            raise Refused(f"unsupported protocol version {repr(hello.get('v'))[:40]}; "
                          f"this server speaks {PROTOCOL_VERSION}")
        if set(hello) != HELLO_FIELDS:
            raise Refused(f"a hello holds exactly the fields {sorted(HELLO_FIELDS)}, got {str(sorted(hello))[:120]}")
        nonce_c, nonce_s = check_nonce(hello["nonce"], "the hello's nonce"), new_nonce()
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        send_frame(conn, {"ok": True, "v": PROTOCOL_VERSION, "op": "challenge", "nonce": nonce_s})
        auth = recv_frame(conn, deadline)
        if auth is None:
            return None
        if set(auth) != AUTH_FIELDS or auth["op"] != "auth" or not proof_matches(
                client_proof(self._key, nonce_c, nonce_s), auth["proof"]):
            self._count("rejected_auth")
            raise Refused("authentication failed")
        channel = Channel(conn, session_key(self._key, nonce_c, nonce_s), "server")
        return channel, server_proof(self._key, nonce_c, nonce_s)

    def _open_session(self, conn: socket.socket, channel: Channel, proof: str) -> bool:
        """True with the session lock held and the sealed welcome (the server's proof) sent."""
        conn.settimeout(self.keepalive_timeout)  # sends: a client that reads nothing is dropped as one silent
        if not self._session.acquire(timeout=self.busy_wait):
            channel.send({"ok": False, "error": "robot busy: another client is connected"})
            return False
        try:
            channel.send({"ok": True, "v": PROTOCOL_VERSION, "proof": proof,
                          "observation_shape": list(self.commands.observation_shape),
                          "action_low": self.commands.action_low.tolist(),
                          "action_high": self.commands.action_high.tolist(),
                          "keepalive_s": self.keepalive_timeout / 3})
        except BaseException:
            self._session.release()
            raise
        return True

    # -------------------------------------------------------------------------------- sessions
    def _run_session(self, conn: socket.socket, channel: Channel) -> None:
        """Serve the session's requests; however it ends, the robot is held before the session is free."""
        try:
            reason = self._command_loop(conn, channel)
        finally:
            try:
                self.commands.hold()
                self._count("holds")
            except Exception as exc:  # report it; the next session still gets the robot
                log.warning("robot server: robot.hold() raised %r", exc)
            self._session.release()
        log.info("robot server: session ended (%s); robot held", reason)

    def _command_loop(self, conn: socket.socket, channel: Channel) -> str:
        """Requests until the session ends; returns why it ended."""
        try:
            while not self._stopping.is_set():
                reason = self._serve_one(conn, channel)
                if reason is not None:
                    return reason
        except OSError as exc:  # a send timing out too: a client that reads nothing is as good as silent
            return f"connection lost: {exc}"
        return "server stopping"

    def _serve_one(self, conn: socket.socket, channel: Channel) -> str | None:
        """Read and answer one frame; a reason when the session ends with it."""
        try:
            request = channel.recv(time.monotonic() + self.keepalive_timeout)
        except TimeoutError:
            self._count("timeouts")
            return self._end(conn, channel, f"keepalive deadline missed ({self.keepalive_timeout:g} s "
                             "without a whole frame): robot held")
        except FrameAuthError as exc:
            self._count("bad_frames")
            return self._end(conn, channel, str(exc))
        except ProtocolError as exc:
            self._count("bad_frames")
            return self._end(conn, channel, f"malformed frame: {exc}")
        if request is None:
            return "client disconnected"
        op = request.get("op")
        if op == "keepalive" and set(request) == {"op"}:  # the common case, kept cheap: no reply
            self._count("keepalives")
            return None
        self._count("commands")
        closing = op == "close" and set(request) == {"op"}
        conn.settimeout(self.keepalive_timeout)  # the read's deadline shrank it; a reply gets a whole deadline
        channel.send({"ok": True} if closing else self._reply(request))
        return "client closed" if closing else None

    def _reply(self, request: dict) -> dict:
        try:
            checked = check_request(request, self.commands.action_dim)
            if checked.op in ("keepalive", "close"):  # only the exact forms {"op": ...} are those
                raise RequestError(f"{checked.op} takes no other field")
            paced = self.commands.paced
            reply = self.commands.execute(checked)
            self._count("paced", self.commands.paced - paced)
        except RequestError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # the robot's own failure: report it, keep the session
            log.warning("robot server: robot raised %r", exc)
            reply = {"ok": False, "error": f"robot error: {type(exc).__name__}: {str(exc)[:500]}"}
        if not reply["ok"]:
            self._count("errors")
        return reply

    def _end(self, conn: socket.socket, channel: Channel, error: str) -> str:
        """A sealed error frame (best effort) before the session closes; returns ``error``."""
        with contextlib.suppress(OSError):
            conn.settimeout(1.0)
            channel.send({"ok": False, "error": error})
        return error
