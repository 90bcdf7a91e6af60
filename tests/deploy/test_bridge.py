"""The TCP robot bridge over real sockets on 127.0.0.1: same episodes as in-process, hostile input refused."""

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
from deploy.runtime import RobotRuntime
from deploy.sim_robot import SimRobot
from deploy.wire import MAX_FRAME, PROTOCOL_VERSION, RobotAuthError, RobotCommandError, new_nonce, recv_frame
from tests.fakes import make_policy_dir
from tests.security.bridge_raw import PointRobot, RawSession, closed_by_server, raw_connect, send_json

TOKEN = "test-token-123"
GOAL = {"goal": [0.65, -0.1, 0.38]}


@pytest.fixture
def point():
    return PointRobot()


@pytest.fixture
def server(point):
    srv = RobotServer(point, TOKEN, busy_wait=2.0, max_command_rate=None).start()  # unpaced: fast fuzzing
    yield srv
    srv.stop()


def hello(srv) -> RawSession:
    """An authenticated session driven by hand (sealed frames)."""
    return RawSession(srv, key=TOKEN)


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
    for proof in ("", None, 123, "ab" * 32, ["x"]):  # the hello is fine; no proof of the key is
        sock = raw_connect(server)
        send_json(sock, {"v": PROTOCOL_VERSION, "op": "hello", "nonce": new_nonce()})
        assert recv_frame(sock)["op"] == "challenge"
        send_json(sock, {"op": "auth", "proof": proof})
        assert recv_frame(sock) == {"ok": False, "error": "authentication failed"}
        assert closed_by_server(sock)
    assert point.untouched
    assert server.stats["rejected_auth"] == 6


def test_wrong_version_is_refused_with_a_reason(server):
    sock = raw_connect(server)
    send_json(sock, {"v": 1, "op": "hello", "token": TOKEN})  # a protocol-1 client
    reply = recv_frame(sock)
    assert reply["ok"] is False and "version" in reply["error"]
    assert closed_by_server(sock)


@pytest.mark.parametrize("first", [{"op": "act", "action": [0.1, 0.1]}, {"op": "reset"}, {"v": 1, "op": "observe"}])
def test_commands_before_hello_close_the_connection(server, point, first):
    sock = raw_connect(server)
    send_json(sock, first)
    assert closed_by_server(sock)
    assert point.untouched


def test_oversized_length_closes_and_the_server_keeps_serving(server, point):
    sock = raw_connect(server)
    sock.sendall(struct.pack(">I", MAX_FRAME + 1) + b"{}")
    assert closed_by_server(sock)
    authed = hello(server)  # the oversized frame arriving after the hello closes too
    authed.sock.sendall(struct.pack(">I", 2**32 - 1))
    assert "MAX_FRAME" in authed.error_then_closed()
    robot = RemoteRobot(*server.address, token=TOKEN)
    np.testing.assert_array_equal(robot.reset(seed=1), np.zeros(2))
    robot.close()
    assert server.stats["bad_frames"] == 2


@pytest.mark.parametrize(
    ("request_bytes", "fragment"),
    [
        (b'{"op": "act", "action": [0.1]}', "list of 2 numbers"),
        (b'{"op": "act", "action": [0.1, "0.2"]}', "finite"),
        (b'{"op": "act", "action": [true, 0.2]}', "finite"),
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
        (b'{"v": 1, "op": "observe"}', "version"),
        (b'{"v": true, "op": "observe"}', "version"),
        (b'{"op": "hello", "nonce": "x"}', "unknown op"),
        (b'{"op": "keepalive", "v": 2}', "keepalive takes no other field"),
    ],
)
def test_invalid_requests_are_answered_with_errors_and_never_reach_the_robot(server, point, request_bytes, fragment):
    session = hello(server)
    reply = session.request(request_bytes)
    assert reply["ok"] is False and fragment in reply["error"]
    assert session.request({"op": "observe"}) == {"ok": True, "observation": [0.0, 0.0]}  # the session stays
    assert point.calls["act"] == 0 and point.calls["reset"] == 0


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_malformed_frames_that_end_the_session(server, point, number):
    session = hello(server)
    session.send(b'{"op": "act", "action": [0.1, ' + number + b"]}")
    assert session.error_then_closed().startswith("malformed frame")
    assert point.calls["act"] == 0 and point.calls["hold"] == 1


def test_out_of_bounds_actions_are_clipped_before_the_robot(server, point):
    robot = RemoteRobot(*server.address, token=TOKEN)
    robot.reset(seed=0)
    step = robot.act(np.array([1.5, -0.2], np.float32))
    robot.close()
    assert step.info["clipped_by_server"] == 1 and point.invalid_actions == []
    assert step.info["rate_limited_by_server"] == 1  # and from a hold, at most 0.5 per step (the runtime's)
    np.testing.assert_allclose(step.observation, [0.05, -0.02], rtol=1e-6)


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
    srv = RobotServer(point, TOKEN, keepalive_timeout=0.3, hello_timeout=0.3).start()
    try:
        silent = raw_connect(srv)
        idle = hello(srv)  # authenticated, then no keepalive
        time.sleep(0.6)
        assert closed_by_server(silent) and "keepalive" in idle.error_then_closed()
        assert srv.stats["timeouts"] == 2 and point.calls["hold"] == 1
        RemoteRobot(*srv.address, token=TOKEN).close()
    finally:
        srv.stop()


def test_token_is_required(point):
    with pytest.raises(ValueError, match="shared key"):
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
    {"op": st.sampled_from(["reset", "observe", "act", "close", "hello", "fly", "hold", "stop"]) | json_values},
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
        assert point.untouched

    check()
    assert_still_serves(server, point)


def test_fuzz_frames_after_hello(server, point):
    @FUZZ
    @given(st.binary(max_size=48), st.integers(0, 64), st.booleans())
    def check(payload, cut, sealed):
        session = hello(server)
        frame = session.frame(payload) if sealed else struct.pack(">I", len(payload)) + payload
        try:
            session.sock.sendall(frame[: max(len(frame) - cut, 0)])
            session.sock.shutdown(socket.SHUT_WR)
            while (reply := session.recv()) is not None:  # a sealed payload that is a request
                assert isinstance(reply["ok"], bool)
        except OSError:  # ConnectionError, the ProtocolError of a closed frame, ENOTCONN
            pass
        session.sock.close()

    check()
    assert point.invalid_actions == []
    assert_still_serves(server, point)


def test_fuzz_json_requests_after_hello(server, point):
    @FUZZ
    @given(st.lists(requests, min_size=1, max_size=6))
    def check(messages):
        session = hello(server)
        for message in messages:
            reply = session.request(message)  # encoded laxly: NaN crosses as a malformed frame
            assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
            if not reply["ok"]:
                assert isinstance(reply["error"], str) and reply["error"]
                if reply["error"].startswith("malformed frame"):
                    assert closed_by_server(session.sock)
                    break
            elif message.get("op") == "close":
                break
            if "observation" in reply:
                assert all(v is None or math.isfinite(v) for v in reply["observation"])
        session.sock.close()
        assert point.invalid_actions == []

    check()
    assert_still_serves(server, point)
