"""`RemoteRobot`: a `Robot` served by a :class:`deploy.bridge_server.RobotServer` (``fleet serve-robot``).

The client proves it holds the shared key without sending it, checks the server's proof in return, and
seals every frame (:class:`deploy.wire.Channel`). A background thread sends keepalives whenever the
client has sent nothing for the server's keepalive interval, so a slow policy step does not end the
session, while a dead client lets the server hold the robot within its keepalive deadline.

Usage::

    robot = RemoteRobot("127.0.0.1", 7000, token="s3cret")     # token: the shared key, never sent
    obs = robot.reset(seed=0)
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time

import numpy as np

from deploy.robot import Step
from deploy.wire import (
    PROTOCOL_VERSION,
    Channel,
    FrameAuthError,
    ProtocolError,
    RobotAuthError,
    RobotCommandError,
    check_nonce,
    client_proof,
    decode_array,
    encode_array,
    is_finite_number,
    is_number,
    new_nonce,
    parse_message,
    proof_matches,
    recv_frame,
    recv_payload,
    send_frame,
    server_proof,
    session_key,
    shared_key,
)

KEEPALIVE_RANGE = (0.01, 10.0)  # seconds; a server asking for anything else is not believed


class RemoteRobot:
    """A `Robot` served by a :class:`RobotServer` (``fleet serve-robot``) at ``host:port``.

    Args:
        host, port: The server.
        token: The shared key (``METAFLEET_ROBOT_TOKEN``); only HMAC proofs of it cross the network.
        timeout: Seconds to connect, and to wait for each reply.

    Raises :class:`RobotAuthError` when the hello is refused or the server cannot prove the key,
    ``OSError`` when nothing listens there.
    """

    def __init__(self, host: str, port: int, token: str, timeout: float = 10.0):
        self.address = (host, port)
        key = shared_key(token)
        self._sock: socket.socket | None = socket.create_connection((host, port), timeout=timeout)
        self._stop = threading.Event()
        self._keepalive: threading.Thread | None = None
        try:
            self._channel, welcome = _handshake(self._sock, key, time.monotonic() + timeout)
            self._sock.settimeout(timeout)  # the handshake's deadline shortened it: each reply gets the full time
            self.observation_shape = tuple(int(n) for n in welcome["observation_shape"])
            self.action_low = np.asarray(welcome["action_low"], dtype=np.float32)
            self.action_high = np.asarray(welcome["action_high"], dtype=np.float32)
            interval = welcome["keepalive_s"]
            if not (is_finite_number(interval) and KEEPALIVE_RANGE[0] <= interval <= KEEPALIVE_RANGE[1]):
                raise ValueError(f"keepalive_s {interval!r} outside {KEEPALIVE_RANGE}")
        except (KeyError, TypeError, ValueError) as exc:
            self.close()
            raise ProtocolError(f"robot server at {host}:{port} sent a malformed welcome: {exc}") from None
        except BaseException:
            self.close()
            raise
        self._keepalive = threading.Thread(target=self._keep_alive, args=(float(interval),),
                                           name="robot-keepalive", daemon=True)
        self._keepalive.start()

    def reset(self, task: dict | None = None, seed: int | None = None) -> np.ndarray:
        reply = self._request({"op": "reset", "task": task, "seed": seed})
        return decode_array(reply.get("observation"), self.observation_shape)

    def observe(self) -> np.ndarray:
        return decode_array(self._request({"op": "observe"}).get("observation"), self.observation_shape)

    def act(self, action: np.ndarray) -> Step:
        reply = self._request({"op": "act", "action": encode_array(action)})
        reward, info = reply.get("reward"), reply.get("info")
        if not (reward is None or is_number(reward)):
            raise ProtocolError(f"act reply holds a non-numeric reward {str(reward)[:40]}")
        return Step(decode_array(reply.get("observation"), self.observation_shape),
                    math.nan if reward is None else float(reward), reply.get("done") is True,
                    info if isinstance(info, dict) else {})

    def hold(self) -> None:
        """Ask the server to hold the robot (keep its joint positions)."""
        self._request({"op": "hold"})

    def stop(self) -> None:
        """Ask the server to stop the robot's motion."""
        self._request({"op": "stop"})

    def close(self) -> None:
        """Say goodbye (the server holds the robot) and close; idempotent."""
        self._stop.set()
        if self._keepalive is not None and self._keepalive is not threading.current_thread():
            self._keepalive.join(timeout=5.0)
        if self._sock is None:
            return
        sock, self._sock = self._sock, None
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: the handshake never finished
            self._channel.send({"op": "close"})
            self._channel.recv()
        sock.close()

    def _request(self, message: dict) -> dict:
        if self._sock is None:
            raise ConnectionError(f"robot {self.address[0]}:{self.address[1]} is closed")
        self._channel.send(message)
        reply = self._channel.recv()
        if reply is None:
            raise ProtocolError(f"robot server at {self.address[0]}:{self.address[1]} closed the connection")
        if reply.get("ok") is not True:
            raise RobotCommandError(str(reply.get("error", "no error message")))
        return reply

    def _keep_alive(self, interval: float) -> None:
        """Send a keepalive whenever nothing was sent for about ``interval`` s, until closed."""
        while not self._stop.wait(interval / 2):
            if time.monotonic() - self._channel.last_sent < interval / 2:
                continue
            try:
                self._channel.send({"op": "keepalive"})
            except OSError:  # the session is gone: the next request says so
                return


def _handshake(sock: socket.socket, key: bytes, deadline: float) -> tuple[Channel, dict]:
    """The client's half of the hello: a sealed channel and the server's (verified) welcome."""
    nonce_c = new_nonce()
    send_frame(sock, {"v": PROTOCOL_VERSION, "op": "hello", "nonce": nonce_c})
    challenge = recv_frame(sock, deadline)
    if challenge is None:
        raise ProtocolError("the robot server closed the connection during the hello")
    if challenge.get("ok") is not True:
        raise RobotAuthError(str(challenge.get("error", "hello refused")))
    nonce_s = check_nonce(challenge.get("nonce"), "the server's challenge nonce")
    send_frame(sock, {"op": "auth", "proof": client_proof(key, nonce_c, nonce_s)})
    channel = Channel(sock, session_key(key, nonce_c, nonce_s), "client")
    body = recv_payload(sock, deadline)
    if body is None:
        raise ProtocolError("the robot server closed the connection during the hello")
    if body[:1] == b"{":  # a plain frame: a refusal, or a server that cannot seal (does not hold the key)
        plain = parse_message(body)
        if plain.get("ok") is False:
            raise RobotAuthError(str(plain.get("error", "hello refused")))
        raise RobotAuthError("the robot server did not prove it holds the key (an unsealed welcome)")
    try:
        welcome = channel.open(body)
    except FrameAuthError:
        raise RobotAuthError("the robot server could not prove it holds the key (a wrong key on either "
                             "side, or not the robot server)") from None
    if welcome.get("ok") is not True:
        raise RobotAuthError(str(welcome.get("error", "hello refused")))
    if not proof_matches(server_proof(key, nonce_c, nonce_s), welcome.get("proof")):
        raise RobotAuthError("the robot server could not prove it holds the key (a wrong proof)")
    return channel, welcome
