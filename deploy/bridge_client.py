"""`RemoteRobot`: a `Robot` served by a :class:`deploy.bridge_server.RobotServer` (``fleet serve-robot``).

Usage::

    robot = RemoteRobot("127.0.0.1", 7000, token="s3cret")
    obs = robot.reset(seed=0)
"""

from __future__ import annotations

import contextlib
import math
import socket

import numpy as np

from deploy.robot import Step
from deploy.wire import (
    PROTOCOL_VERSION,
    ProtocolError,
    RobotAuthError,
    RobotCommandError,
    decode_array,
    encode_array,
    is_number,
    recv_frame,
    send_frame,
)


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
        if not (reward is None or is_number(reward)):
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
