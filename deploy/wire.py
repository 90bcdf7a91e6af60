"""The robot bridge's wire format, protocol v1 (spec in docs/robots.md): frames and JSON values.

Each frame is a 4-byte big-endian unsigned length followed by that many bytes of a UTF-8 JSON object,
at most ``MAX_FRAME`` bytes. The client opens with ``{"v": 1, "op": "hello", "token": ...}``; then
``reset`` / ``observe`` / ``act`` / ``close`` requests, each answered by one ``{"ok": true, ...}`` or
``{"ok": false, "error": ...}`` frame. Server: :mod:`deploy.bridge_server`; client: :mod:`deploy.bridge_client`.
"""

from __future__ import annotations

import json
import math
import socket
import struct

import numpy as np

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
HEADER = struct.Struct(">I")
MAX_SEED = 2**63 - 1


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
    """Send one frame (see :func:`encode_frame`)."""
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
