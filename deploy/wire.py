"""The robot bridge's wire format, protocol v2 (spec in docs/robots.md): frames, strict JSON, authentication.

Each frame is a 4-byte big-endian unsigned length followed by that many bytes (at most ``MAX_FRAME``).
The handshake's frames hold one UTF-8 JSON object: the client's ``hello`` (its nonce), the server's
``challenge`` (its nonce), the client's ``auth`` (an HMAC-SHA256 proof over both nonces with the shared
key, which never travels). Every frame after that, in both directions, is *sealed* (:class:`Channel`):
an 8-byte sequence number and an HMAC-SHA256 tag (a per-session key derived from the shared key and both
nonces) before the JSON payload. A replayed, reordered, reflected or modified frame fails its check.
Server: :mod:`deploy.bridge_server`; client: :mod:`deploy.bridge_client`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import socket
import struct
import threading
import time

import numpy as np

PROTOCOL_VERSION = 2
MAX_FRAME = 1 << 20
MAX_DEPTH = 32  # JSON nesting a request may have: tasks are shallow, recursion bombs are not
HEADER = struct.Struct(">I")
SEQ = struct.Struct(">Q")
TAG_BYTES = 32  # HMAC-SHA256
NONCE_BYTES = 16
MAX_SEED = 2**63 - 1
# Labels bind each MAC to its purpose: a client proof cannot be replayed as the server's, nor a frame
# sent by the server be reflected back to it as the client's.
CLIENT_PROOF, SERVER_PROOF = b"metafleet-bridge/2 client proof", b"metafleet-bridge/2 server proof"
SESSION_KEY = b"metafleet-bridge/2 session key"
DIRECTION = {"client": b"metafleet-bridge/2 client->server", "server": b"metafleet-bridge/2 server->client"}


class ProtocolError(ConnectionError):
    """A frame that breaks the protocol: oversized, truncated, not a strict UTF-8 JSON object, unauthentic."""


class FrameAuthError(ProtocolError):
    """A sealed frame whose tag or sequence number does not check: replayed, reordered, modified or forged."""


class RobotAuthError(ConnectionError):
    """The hello was refused (wrong key or protocol version, busy robot) or the server could not prove the key."""


class RobotCommandError(RuntimeError):
    """The server answered a request with ``{"ok": false, "error": ...}``."""


# ----------------------------------------------------------------------------------------- frames
def encode_payload(message: dict) -> bytes:
    """Compact strict JSON (non-finite floats are not JSON: callers send them as null; ASCII-only output)."""
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode("ascii")


def encode_frame(message: dict) -> bytes:
    """Length prefix + :func:`encode_payload` (a plain, unsealed frame: the handshake's)."""
    return _frame(encode_payload(message))


def send_frame(sock: socket.socket, message: dict) -> None:
    """Send one plain frame (see :func:`encode_frame`)."""
    sock.sendall(encode_frame(message))


def recv_frame(sock: socket.socket, deadline: float | None = None) -> dict | None:
    """Read one plain frame; ``None`` on a clean close between frames; :class:`ProtocolError` on a bad one."""
    payload = recv_payload(sock, deadline)
    return None if payload is None else parse_message(payload)


def recv_payload(sock: socket.socket, deadline: float | None = None) -> bytes | None:
    """Read one frame's bytes; ``None`` on a clean close between frames.

    ``deadline`` (``time.monotonic()`` seconds) bounds the *whole* frame, so a peer dripping a byte at a
    time cannot hold the connection: ``TimeoutError`` once it passes.
    """
    header = _recv_exact(sock, HEADER.size, allow_eof=True, deadline=deadline)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:  # refuse before reading: a length prefix must not make us buffer a gigabyte
        raise ProtocolError(f"declared frame length {length} exceeds MAX_FRAME ({MAX_FRAME})")
    return _recv_exact(sock, length, allow_eof=False, deadline=deadline)


def _frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds MAX_FRAME ({MAX_FRAME})")
    return HEADER.pack(len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int, allow_eof: bool, deadline: float | None) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"frame deadline passed ({got} of {n} bytes)")
            sock.settimeout(remaining)
        chunk = sock.recv(min(n - got, 65536))
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise ProtocolError(f"connection closed inside a frame ({got} of {n} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------ strict json
def parse_message(payload: bytes) -> dict:
    """A frame's payload as a JSON object, strictly: :class:`ProtocolError` for anything else.

    Refused: invalid UTF-8, ``NaN`` / ``Infinity`` / numbers beyond float range, duplicate keys, lone
    surrogates (``"\\ud800"``), nesting deeper than ``MAX_DEPTH``, a top level that is not an object.
    """
    try:
        message = json.loads(payload.decode("utf-8"), object_pairs_hook=unique_keys,
                             parse_constant=refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"not strict UTF-8 JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a JSON {type(message).__name__}, expected an object")
    _check_strings(message)
    return message


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """`json.loads` object hook that refuses a repeated key (the last one would silently win)."""
    message = dict(pairs)
    if len(message) != len(pairs):
        keys = [key for key, _ in pairs]
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return message


def refuse_constant(name: str):
    """`json.loads` constant hook that refuses NaN and +-Infinity (not JSON numbers)."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond float range")
    return value


def _check_strings(value, depth: int = 0) -> None:
    """Depth, and strings that UTF-8 can carry (a lone surrogate escape would fail any later encode)."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"JSON nested deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, depth + 1)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"string {ascii(text)[:40]} holds a lone surrogate") from None


# --------------------------------------------------------------------------------- authentication
def shared_key(token: str) -> bytes:
    """The HMAC key from the operator's shared secret (``METAFLEET_ROBOT_TOKEN`` / ``--token-file``)."""
    if not isinstance(token, str) or not token:
        raise ValueError("the robot bridge needs a non-empty shared key (METAFLEET_ROBOT_TOKEN or --token-file)")
    try:
        return token.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the robot bridge's shared key must be valid text (it holds a lone surrogate)") from None


def new_nonce() -> str:
    """A fresh random nonce, hex (``NONCE_BYTES`` bytes)."""
    return secrets.token_hex(NONCE_BYTES)


def check_nonce(value, what: str) -> str:
    """``value`` if it is a nonce (``2 * NONCE_BYTES`` lowercase hex digits); :class:`ProtocolError` otherwise."""
    if not (isinstance(value, str) and len(value) == 2 * NONCE_BYTES and _is_hex(value)):
        raise ProtocolError(f"{what} must be {2 * NONCE_BYTES} lowercase hex digits")
    return value


def client_proof(key: bytes, client_nonce: str, server_nonce: str) -> str:
    """What the client sends to prove it holds ``key`` (hex HMAC-SHA256 over both nonces)."""
    return _mac(key, CLIENT_PROOF, client_nonce, server_nonce).hex()


def server_proof(key: bytes, client_nonce: str, server_nonce: str) -> str:
    """What the server sends (sealed) to prove it holds ``key`` too."""
    return _mac(key, SERVER_PROOF, client_nonce, server_nonce).hex()


def proof_matches(expected: str, given) -> bool:
    """Constant-time comparison of a received proof with the expected one."""
    return isinstance(given, str) and given.isascii() and hmac.compare_digest(expected, given)


def session_key(key: bytes, client_nonce: str, server_nonce: str) -> bytes:
    """The per-session MAC key: fresh nonces make every session's frames unusable in any other."""
    return _mac(key, SESSION_KEY, client_nonce, server_nonce)


def _mac(key: bytes, label: bytes, client_nonce: str, server_nonce: str) -> bytes:
    # Fixed-length nonces, so the concatenation is unambiguous.
    message = label + b"\x00" + bytes.fromhex(client_nonce) + bytes.fromhex(server_nonce)
    return hmac.new(key, message, hashlib.sha256).digest()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


class Channel:
    """One authenticated session's sealed frames over ``sock``, from the point of view of ``role``.

    A sealed frame's payload is ``seq (8 bytes) | tag (32) | JSON``, tag = HMAC-SHA256(session key,
    direction label | seq | JSON). Each direction numbers its frames 0, 1, 2, ...; :meth:`open` accepts only
    the next number. ``send`` is thread-safe (the client's keepalive thread shares it); ``recv`` is not.
    """

    def __init__(self, sock: socket.socket | None, key: bytes, role: str):
        if role not in DIRECTION:
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        self.sock, self._key = sock, key
        self._out_label = DIRECTION[role]
        self._in_label = DIRECTION["server" if role == "client" else "client"]
        self._out_seq = self._in_seq = 0
        self._lock = threading.Lock()
        self.last_sent = time.monotonic()

    def seal_payload(self, payload: bytes) -> bytes:
        """One sealed frame (length prefix included) holding ``payload``; takes the next sequence number."""
        with self._lock:
            seq = SEQ.pack(self._out_seq)
            self._out_seq += 1
        return _frame(seq + self._tag(self._out_label, seq, payload) + payload)

    def send(self, message: dict) -> None:
        """Seal and send ``message``: numbering and sending under one lock keeps the numbers in send order."""
        payload = encode_payload(message)
        with self._lock:
            seq = SEQ.pack(self._out_seq)
            self._out_seq += 1
            self.sock.sendall(_frame(seq + self._tag(self._out_label, seq, payload) + payload))
            self.last_sent = time.monotonic()

    def recv(self, deadline: float | None = None) -> dict | None:
        """The next sealed frame's message; ``None`` on a clean close; ProtocolError / FrameAuthError."""
        body = recv_payload(self.sock, deadline)
        return None if body is None else self.open(body)

    def open(self, body: bytes) -> dict:
        """Check one sealed frame's tag, then its number, then parse it (:func:`parse_message`)."""
        head = SEQ.size + TAG_BYTES
        if len(body) < head:
            raise FrameAuthError(f"frame authentication failed: {len(body)} bytes, shorter than a sealed frame")
        seq, tag, payload = body[:SEQ.size], body[SEQ.size:head], body[head:]
        if not hmac.compare_digest(tag, self._tag(self._in_label, seq, payload)):
            raise FrameAuthError("frame authentication failed: the tag does not match (modified, forged or reflected)")
        (number,) = SEQ.unpack(seq)
        if number != self._in_seq:
            kind = "replayed" if number < self._in_seq else "out of order (a frame is missing)"
            raise FrameAuthError(f"frame {kind}: sequence number {number}, expected {self._in_seq}")
        self._in_seq += 1
        return parse_message(payload)

    def _tag(self, label: bytes, seq: bytes, payload: bytes) -> bytes:
        return hmac.new(self._key, label + seq + payload, hashlib.sha256).digest()


# ------------------------------------------------------------------------------------ json values
def encode_array(values: np.ndarray) -> list:
    """Floats for JSON: non-finite entries become null (JSON has no NaN)."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).ravel()]


def decode_array(values, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_array` (null -> NaN), checked against ``shape``."""
    if not isinstance(values, list) or not all(is_number(v) or v is None for v in values):
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


def is_number(value) -> bool:
    """A JSON number (int or float, not bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A JSON number that is finite as a float."""
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False
