"""The TCP robot bridge over real sockets on 127.0.0.1: same episodes as in-process, hostile input refused."""

import json
import math
import socket
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.bridge_client import RemoteRobot
from deploy.bridge_server import RobotServer
from deploy.connect import connect_robot
from deploy.robot import Step
from deploy.runtime import RobotRuntime
from deploy.sim_robot import SimRobot
from deploy.wire import MAX_FRAME, RobotAuthError, RobotCommandError, recv_frame
from tests.fakes import make_policy_dir

TOKEN = "test-token-123"
GOAL = {"goal": [0.65, -0.1, 0.38]}


class PointRobot:
    """A tiny numpy robot that records every call and every action it is given that breaks its contract."""

    def __init__(self, nan_at: int | None = None):
        self.observation_shape = (2,)
        self.action_low, self.action_high = -np.ones(2, np.float32), np.ones(2, np.float32)
        self.pos, self.t, self.nan_at = np.zeros(2, np.float32), 0, nan_at
        self.calls = {"reset": 0, "observe": 0, "act": 0}
        self.invalid_actions: list = []

    def reset(self, task=None, seed=None):
        self.calls["reset"] += 1
        self.pos, self.t = np.zeros(2, np.float32), 0
        return self.pos.copy()

    def observe(self):
        self.calls["observe"] += 1
        return self.pos.copy()

    def act(self, action):
        self.calls["act"] += 1
        a = np.asarray(action)
        if a.shape != (2,) or not np.isfinite(a).all() or (np.abs(a) > 1).any():
            self.invalid_actions.append(action)
        self.pos = self.pos + 0.1 * np.nan_to_num(a.astype(np.float32))
        self.t += 1
        obs = np.full(2, np.nan, np.float32) if self.t == self.nan_at else self.pos.copy()
        return Step(obs, float(-np.linalg.norm(self.pos)), self.t >= 5, {"success": False, "arr": np.ones(2)})

    def close(self):
        pass


@pytest.fixture
def point():
    return PointRobot()


@pytest.fixture
def server(point):
    srv = RobotServer(point, TOKEN, busy_wait=2.0).start()
    yield srv
    srv.stop()


def raw_connect(srv) -> socket.socket:
    sock = socket.create_connection(srv.address, timeout=5.0)
    return sock


def send_json(sock, message) -> None:
    payload = json.dumps(message).encode()
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def closed_by_server(sock) -> bool:
    """True when the server closed this connection (EOF or reset) within the socket timeout."""
    sock.settimeout(5.0)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def hello(srv) -> socket.socket:
    sock = raw_connect(srv)
    send_json(sock, {"v": 1, "op": "hello", "token": TOKEN})
    assert recv_frame(sock)["ok"] is True
    return sock


def test_episode_over_tcp_equals_the_direct_episode(tmp_path):
    runtime = RobotRuntime(make_policy_dir(tmp_path))
    direct, served = SimRobot(horizon=20), SimRobot(horizon=20)
    srv = RobotServer(served, TOKEN).start()
    remote = connect_robot(f"tcp://127.0.0.1:{srv.address[1]}", token=TOKEN)
    try:
        assert remote.observation_shape == (20,)
        np.testing.assert_array_equal(remote.action_high, direct.action_high)
        for seed in (7, 8):
            expected = runtime.run_episode(direct, task=GOAL, seed=seed)
            assert runtime.run_episode(remote, task=GOAL, seed=seed) == expected
        assert expected["steps"] == 20
        np.testing.assert_array_equal(remote.observe(), direct.observe())
    finally:
        remote.close()
        srv.stop()
        direct.close()
        served.close()
    assert srv.stats["accepted"] == 1 and srv.stats["commands"] == 2 * 21 + 2  # resets, acts, observe, close


def test_wrong_token_is_rejected_and_the_robot_untouched(server, point):
    with pytest.raises(RobotAuthError, match="authentication failed"):
        RemoteRobot(*server.address, token="wrong")
    for token in ("", None, 123, TOKEN + "x"):
        sock = raw_connect(server)
        send_json(sock, {"v": 1, "op": "hello", "token": token})
        assert recv_frame(sock) == {"ok": False, "error": "authentication failed"}
        assert closed_by_server(sock)
    assert point.calls == {"reset": 0, "observe": 0, "act": 0}
    assert server.stats["rejected_auth"] == 5


def test_wrong_version_is_refused_with_a_reason(server):
    sock = raw_connect(server)
    send_json(sock, {"v": 2, "op": "hello", "token": TOKEN})
    reply = recv_frame(sock)
    assert reply["ok"] is False and "version" in reply["error"]
    assert closed_by_server(sock)


@pytest.mark.parametrize("first", [{"op": "act", "action": [0.1, 0.1]}, {"op": "reset"}, {"v": 1, "op": "observe"}])
def test_commands_before_hello_close_the_connection(server, point, first):
    sock = raw_connect(server)
    send_json(sock, first)
    assert closed_by_server(sock)
    assert point.calls == {"reset": 0, "observe": 0, "act": 0}


def test_oversized_length_closes_and_the_server_keeps_serving(server, point):
    sock = raw_connect(server)
    sock.sendall(struct.pack(">I", MAX_FRAME + 1) + b"{}")
    assert closed_by_server(sock)
    authed = hello(server)  # the oversized frame arriving after the hello closes too
    authed.sendall(struct.pack(">I", 2**32 - 1))
    assert closed_by_server(authed)
    robot = RemoteRobot(*server.address, token=TOKEN)
    np.testing.assert_array_equal(robot.reset(seed=1), np.zeros(2))
    robot.close()
    assert server.stats["bad_frames"] == 2


@pytest.mark.parametrize(
    ("request_bytes", "fragment"),
    [
        (b'{"op": "act", "action": [0.1]}', "list of 2 numbers"),
        (b'{"op": "act", "action": [0.1, NaN]}', "finite"),
        (b'{"op": "act", "action": [0.1, Infinity]}', "finite"),
        (b'{"op": "act", "action": [0.1, "0.2"]}', "finite"),
        (b'{"op": "act", "action": [true, 0.2]}', "finite"),
        (b'{"op": "act", "action": [1e999, 0.2]}', "finite"),
        (b'{"op": "act", "action": [100000000000000000000000000000000000000000000000000000000000000000000'
         + b'000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
         + b'000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
         + b'000000000000000000000000000000000000000000000000000000000000000000000000000000000000000, 0]}', "finite"),
        (b'{"op": "act", "action": {"x": 1}}', "list of 2 numbers"),
        (b'{"op": "act"}', "list of 2 numbers"),
        (b'{"op": "act", "action": [0, 0], "extra": 1}', "unknown field"),
        (b'{"op": "reset", "seed": -1}', "seed"),
        (b'{"op": "reset", "seed": true}', "seed"),
        (b'{"op": "reset", "seed": 1.5}', "seed"),
        (b'{"op": "reset", "task": [1, 2]}', "task"),
        (b'{"op": "fly"}', "unknown op"),
        (b'{"op": null}', "unknown op"),
        (b'{"v": 2, "op": "observe"}', "version"),
        (b'{"op": "hello", "v": 1, "token": "x"}', "unknown op"),
    ],
)
def test_invalid_requests_are_answered_with_errors_and_never_reach_the_robot(server, point, request_bytes, fragment):
    sock = hello(server)
    sock.sendall(struct.pack(">I", len(request_bytes)) + request_bytes)
    reply = recv_frame(sock)
    assert reply["ok"] is False and fragment in reply["error"]
    send_json(sock, {"op": "observe"})  # the connection stays usable
    assert recv_frame(sock) == {"ok": True, "observation": [0.0, 0.0]}
    assert point.calls["act"] == 0 and point.calls["reset"] == 0


def test_out_of_bounds_actions_are_clipped_before_the_robot(server, point):
    robot = RemoteRobot(*server.address, token=TOKEN)
    robot.reset(seed=0)
    step = robot.act(np.array([1.5, -0.2], np.float32))
    robot.close()
    assert step.info["clipped_by_server"] == 1 and point.invalid_actions == []
    np.testing.assert_allclose(step.observation, [0.1, -0.02], rtol=1e-6)


def test_robot_errors_are_reported_not_fatal(tmp_path):
    robot = SimRobot(horizon=5)
    srv = RobotServer(robot, TOKEN).start()
    remote = RemoteRobot(*srv.address, token=TOKEN)
    try:
        with pytest.raises(RobotCommandError, match="goal"):
            remote.reset(task={"goal": "nowhere"})
        assert remote.reset(task=GOAL, seed=0).shape == (20,)
    finally:
        remote.close()
        srv.stop()
        robot.close()


def test_nan_observations_cross_as_null_and_become_safe_stops():
    robot = PointRobot(nan_at=2)
    srv = RobotServer(robot, TOKEN).start()
    remote = RemoteRobot(*srv.address, token=TOKEN)
    try:
        remote.reset(seed=0)
        remote.act(np.array([0.5, 0.5], np.float32))
        step = remote.act(np.array([0.5, 0.5], np.float32))
        assert np.isnan(step.observation).all() and step.info["arr"] == [1.0, 1.0]
    finally:
        remote.close()
        srv.stop()


def test_one_client_at_a_time(point):
    srv = RobotServer(point, TOKEN, busy_wait=0.2).start()
    try:
        first = RemoteRobot(*srv.address, token=TOKEN)
        with pytest.raises(RobotAuthError, match="busy"):
            RemoteRobot(*srv.address, token=TOKEN)
        first.close()
        RemoteRobot(*srv.address, token=TOKEN).close()
    finally:
        srv.stop()


def test_idle_clients_are_dropped(point):
    srv = RobotServer(point, TOKEN, idle_timeout=0.3, hello_timeout=0.3).start()
    try:
        silent = raw_connect(srv)
        idle = hello(srv)
        time.sleep(0.6)
        assert closed_by_server(silent) and closed_by_server(idle)
        assert srv.stats["timeouts"] == 2
        RemoteRobot(*srv.address, token=TOKEN).close()
    finally:
        srv.stop()


def test_token_is_required(point):
    with pytest.raises(ValueError, match="token"):
        RobotServer(point, "")
    with pytest.raises(ValueError, match="METAFLEET_ROBOT_TOKEN"):
        connect_robot("tcp://127.0.0.1:9", token="")


# -------------------------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
requests = st.fixed_dictionaries(
    {"op": st.sampled_from(["reset", "observe", "act", "close", "hello", "fly"]) | json_values},
    optional={"v": st.sampled_from([1, 2]) | json_values, "task": json_values, "seed": json_values,
              "action": st.lists(st.floats() | st.integers(-3, 3) | json_values, max_size=4) | json_values,
              "token": json_values, "junk": json_values},
)


def assert_still_serves(srv, point) -> None:
    robot = RemoteRobot(*srv.address, token=TOKEN)
    robot.reset(seed=0)
    robot.act(np.array([0.1, -0.1], np.float32))
    robot.close()
    assert point.invalid_actions == []


def test_fuzz_random_bytes_before_hello(server, point):
    @FUZZ
    @given(st.binary(max_size=64) | st.builds(lambda n, tail: struct.pack(">I", n) + tail,
                                              st.integers(0, 2**32 - 1), st.binary(max_size=64)))
    def check(data):
        sock = raw_connect(server)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server may already have closed (reset) the connection: that is the point
            pass
        assert closed_by_server(sock)
        sock.close()
        assert point.calls["act"] == 0

    check()
    assert_still_serves(server, point)


def test_fuzz_frames_after_hello(server, point):
    @FUZZ
    @given(st.binary(max_size=48), st.integers(0, 64), st.booleans())
    def check(payload, declared_extra, truncate):
        sock = hello(server)
        length = len(payload) + (declared_extra if truncate else 0)
        try:
            sock.sendall(struct.pack(">I", length) + payload)
            sock.shutdown(socket.SHUT_WR)
            while (reply := recv_frame(sock)) is not None:  # a payload that happens to be a JSON object
                assert isinstance(reply["ok"], bool)
        except OSError:  # ConnectionError, the ProtocolError of a closed frame, ENOTCONN
            pass
        sock.close()

    check()
    assert point.invalid_actions == []
    assert_still_serves(server, point)


def test_fuzz_json_requests_after_hello(server, point):
    @FUZZ
    @given(st.lists(requests, min_size=1, max_size=6))
    def check(messages):
        sock = hello(server)
        for message in messages:
            send_json(sock, message)
            reply = recv_frame(sock)
            assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
            if not reply["ok"]:
                assert isinstance(reply["error"], str) and reply["error"]
            elif message.get("op") == "close":
                break
            if "observation" in reply:
                assert all(v is None or math.isfinite(v) for v in reply["observation"])
        sock.close()
        assert point.invalid_actions == []

    check()
    assert_still_serves(server, point)
