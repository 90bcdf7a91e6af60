"""Hand-driven bridge clients over raw 127.0.0.1 sockets: what tests send that `RemoteRobot` never would.

`RawSession` runs the real handshake, then seals (or forges) frames by hand; `Relay` sits between a client
and a server, recording both directions and optionally tampering with what the server sends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import select
import socket
import struct
import threading
import time

import numpy as np

from deploy import wire
from deploy.robot import Step

KEY = "security-test-key-0123456789abcdef"


class PointRobot:
    """A tiny numpy robot recording every call (with its time) and every action breaking its contract."""

    def __init__(self, nan_at: int | None = None):
        self.observation_shape = (2,)
        self.action_low, self.action_high = -np.ones(2, np.float32), np.ones(2, np.float32)
        self.pos, self.t, self.nan_at = np.zeros(2, np.float32), 0, nan_at
        self.calls = {"reset": 0, "observe": 0, "act": 0, "hold": 0, "stop": 0}
        self.invalid_actions: list = []
        self.actions: list[np.ndarray] = []
        self.act_times: list[float] = []
        self.hold_times: list[float] = []

    def reset(self, task=None, seed=None):
        self.calls["reset"] += 1
        self.pos, self.t = np.zeros(2, np.float32), 0
        return self.pos.copy()

    def observe(self):
        self.calls["observe"] += 1
        return self.pos.copy()

    def act(self, action):
        self.calls["act"] += 1
        self.act_times.append(time.monotonic())
        a = np.asarray(action)
        self.actions.append(a.copy())
        if a.shape != (2,) or not np.isfinite(a).all() or (np.abs(a) > 1).any():
            self.invalid_actions.append(action)
        self.pos = self.pos + 0.1 * np.nan_to_num(a.astype(np.float32))
        self.t += 1
        obs = np.full(2, np.nan, np.float32) if self.t == self.nan_at else self.pos.copy()
        return Step(obs, float(-np.linalg.norm(self.pos)), self.t >= 5, {"success": False, "arr": np.ones(2)})

    def hold(self):
        self.calls["hold"] += 1
        self.hold_times.append(time.monotonic())

    def stop(self):
        self.calls["stop"] += 1

    def close(self):
        pass

    @property
    def untouched(self) -> bool:
        return self.calls["reset"] == self.calls["observe"] == self.calls["act"] == 0


def raw_connect(srv, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(srv.address, timeout=timeout)


def send_json(sock: socket.socket, message) -> None:
    """A plain frame, encoded laxly (NaN allowed): the server must refuse what it should refuse."""
    send_payload(sock, json.dumps(message).encode())


def send_payload(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes | None:
    """Everything the server sends until it closes (EOF or reset); None if it is still open after ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return data


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    return read_until_closed(sock, timeout) is not None


def drip(sock: socket.socket, data: bytes, every: float, limit: float = 1.5) -> None:
    """Send ``data`` one byte every ``every`` s until the server answers or closes, or ``limit`` s pass."""
    start = time.monotonic()
    for byte in data:
        if select.select([sock], [], [], 0)[0] or time.monotonic() - start > limit:
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(every)


def connect_when_free(srv, timeout: float = 3.0) -> float:
    """Seconds until a `RemoteRobot` with ``KEY`` gets the session (retrying refusals); closes it again."""
    from deploy.bridge_client import RemoteRobot

    start = time.monotonic()
    while True:
        try:
            RemoteRobot(*srv.address, token=KEY).close()
            return time.monotonic() - start
        except (ConnectionError, OSError):  # refused: the unauthenticated cap, or still busy
            assert time.monotonic() - start < timeout, "the session did not become free"
            time.sleep(0.02)


class RawSession:
    """The v2 handshake done by hand, then frames sealed (or tampered with) by the test."""

    def __init__(self, srv, key: str = KEY):
        self.sock = raw_connect(srv)
        self.client_nonce = wire.new_nonce()
        send_json(self.sock, {"v": wire.PROTOCOL_VERSION, "op": "hello", "nonce": self.client_nonce})
        challenge = wire.recv_frame(self.sock)
        assert challenge["ok"] is True, challenge
        self.server_nonce = challenge["nonce"]
        proof = wire.client_proof(key.encode(), self.client_nonce, self.server_nonce)
        send_json(self.sock, {"op": "auth", "proof": proof})
        self.channel = wire.Channel(self.sock, wire.session_key(key.encode(), self.client_nonce, self.server_nonce),
                                    "client")
        body = wire.recv_payload(self.sock)  # a refusal comes plain: the client may not hold the key
        self.welcome = wire.parse_message(body) if body[:1] == b"{" else self.channel.open(body)
        assert self.welcome["ok"] is True, self.welcome

    def frame(self, message: dict | bytes) -> bytes:
        """One sealed frame (length prefix included); advances the sequence number."""
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        return self.channel.seal_payload(payload)

    def send(self, message: dict | bytes) -> None:
        self.sock.sendall(self.frame(message))

    def recv(self) -> dict | None:
        return self.channel.recv()

    def request(self, message: dict | bytes) -> dict:
        self.send(message)
        return self.recv()

    def error_then_closed(self) -> str:
        """The sealed error frame the server sends before it closes; asserts the close."""
        reply = self.recv()
        assert reply is not None and reply["ok"] is False, reply
        assert closed_by_server(self.sock)
        return reply["error"]


class Relay:
    """A TCP relay on 127.0.0.1 to ``target``: records both directions; ``tamper(record, start, chunk)`` may
    rewrite each chunk the server sends (``record``: all server bytes so far, this chunk included at ``start``)."""

    def __init__(self, target: tuple[str, int], tamper=None):
        self.target, self.tamper = target, tamper
        self.to_server, self.to_client = bytearray(), bytearray()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = self._listener.getsockname()[:2]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(client, server, self.to_server, None), daemon=True).start()
        self._pump(server, client, self.to_client, self.tamper)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray, tamper) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                start = len(record)
                record.extend(chunk)
                dst.sendall(tamper(record, start, chunk) if tamper else chunk)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def wait_for(predicate, timeout: float = 3.0) -> float:
    """Seconds until ``predicate()`` held (polling every 5 ms); fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.005)
    return time.monotonic() - start


def no_server_tracebacks(caplog) -> bool:
    """No ERROR record and no traceback logged (the server's catch-all logs both)."""
    return not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def impostor(reply_for) -> tuple[str, int]:
    """A server that answers each frame with ``reply_for(frame)`` (plain frames) and never knows the key."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run():
        conn, _ = listener.accept()
        with conn:
            while (frame := wire.recv_frame(conn)) is not None:
                conn.sendall(reply_for(frame))

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[:2]


# ---------------------------------------------------------------------------------------- fuzzing
SEEDS = [b'{"op": "act", "action": [0.1, -0.2]}', b'{"op": "reset", "task": {"goal": [0.6, 0.1, 0.4]}, "seed": 3}',
         b'{"op": "observe"}', b'{"v": 2, "op": "hold"}', b'{"op": "keepalive"}',
         b'{"v": 2, "op": "hello", "nonce": "' + b"ab" * 16 + b'"}', b'{"op": "auth", "proof": "' + b"cd" * 32 + b'"}']
TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b'"\\ud800"', b'"\\udfff"', b"true", b"null", b"[" * 40,
          b"{" * 40, b'"op": "act", ', b"\xff", b"\xed\xa0\x80", b"\x00", b"1" * 5000, b",", b'"', b"}", b"]"]


def malformed(rng: random.Random) -> bytes:
    """One hostile payload: random bytes, or a valid request with flipped bits, cut, or a token inserted."""
    seed = rng.choice(SEEDS)
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if kind == 1:
        data = bytearray(seed)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:
        return seed[: rng.randrange(len(seed))]
    if kind == 3:
        return seed[:-1] + b', "op": "observe"}'  # a duplicate key
    at = rng.randrange(len(seed))
    return seed[:at] + rng.choice(TOKENS) + seed[at:]
