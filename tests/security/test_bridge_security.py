"""The TCP bridge against a hostile network and a hostile client: real sockets on 127.0.0.1 only.

Rows of docs/security.md, "The TCP bridge": authentication without sending the key (4), deadlines (5),
keepalive and hold (6), the server's own rate and safety limits (7), the strict wire (8).
"""

import json
import random
import time

import numpy as np
import pytest

from deploy import wire
from deploy.bridge_client import RemoteRobot
from deploy.bridge_server import RobotServer
from deploy.safety import SafetyConfig
from deploy.wire import ProtocolError, RobotAuthError
from tests.security.bridge_raw import (
    KEY,
    PointRobot,
    RawSession,
    Relay,
    closed_by_server,
    connect_when_free,
    drip,
    impostor,
    malformed,
    no_server_tracebacks,
    raw_connect,
    read_until_closed,
    send_json,
    wait_for,
)

ACT = {"op": "act", "action": [0.1, -0.1]}


@pytest.fixture
def point():
    return PointRobot()


@pytest.fixture
def server(point):
    srv = RobotServer(point, KEY, busy_wait=2.0).start()
    yield srv
    srv.stop()


# ------------------------------------------------------------------- 4. challenge-response and frame MACs
def test_the_key_never_crosses_the_wire(server):
    relay = Relay(server.address)
    robot = RemoteRobot(*relay.address, token=KEY)
    robot.reset(seed=0)
    robot.act(np.array([0.1, 0.2], np.float32))
    robot.close()
    transcript = bytes(relay.to_server) + bytes(relay.to_client)
    assert KEY.encode() not in transcript and KEY.encode().hex().encode() not in transcript
    assert b'"token"' not in transcript


def test_a_wrong_key_is_refused_and_the_robot_untouched(server, point):
    with pytest.raises(RobotAuthError, match="authentication failed"):
        RemoteRobot(*server.address, token=KEY + "x")
    with pytest.raises(AssertionError):  # the raw client gets the same refusal
        RawSession(server, key="wrong")
    assert point.untouched and server.stats["rejected_auth"] == 2


@pytest.mark.parametrize("welcome", ["plain", "sealed with another key"])
def test_the_client_refuses_a_server_that_cannot_prove_the_key(welcome):
    nonce = "00" * 16
    shapes = {"observation_shape": [2], "action_low": [-1, -1], "action_high": [1, 1], "keepalive_s": 0.2}

    def reply_for(frame):
        if frame.get("op") == "hello" or "token" in frame or welcome == "plain":
            return wire.encode_frame({"ok": True, "v": 2, "op": "challenge", "nonce": nonce, **shapes})
        fake = wire.Channel(None, wire.session_key(b"not-the-key", frame.get("nonce", nonce), nonce), "server")
        return fake.seal_payload(json.dumps({"ok": True, "v": 2, "proof": "00" * 32, **shapes}).encode())

    with pytest.raises(RobotAuthError, match="prove"):
        RemoteRobot(*impostor(reply_for), token=KEY)


def test_a_replayed_frame_closes_the_session(server, point):
    session = RawSession(server)
    frame = session.frame(ACT)
    session.sock.sendall(frame)
    assert session.recv()["ok"] is True
    session.sock.sendall(frame)  # the same bytes again: a valid MAC, an old sequence number
    assert "replay" in session.error_then_closed()
    assert point.calls["act"] == 1 and point.calls["hold"] == 1


def test_reordered_frames_close_the_session(server, point):
    session = RawSession(server)
    first, second = session.frame(ACT), session.frame({"op": "observe"})
    session.sock.sendall(second + first)
    assert "order" in session.error_then_closed()
    assert point.untouched


def test_a_reflected_server_frame_is_refused(server, point):
    session = RawSession(server)
    session.send({"op": "observe"})
    body = wire.recv_payload(session.sock)  # the server's reply, sealed under the server's direction label
    assert session.channel.open(body)["ok"] is True
    session.sock.sendall(len(body).to_bytes(4, "big") + body)  # sent back with the number the server expects
    assert "authentication" in session.error_then_closed()
    assert point.calls["observe"] == 1


@pytest.mark.parametrize("where", ["sequence number", "tag", "payload", "last byte"])
def test_a_flipped_bit_closes_the_session(server, point, where):
    session = RawSession(server)
    frame = bytearray(session.frame(ACT))
    index = {"sequence number": 4 + 7, "tag": 4 + 8 + 5, "payload": 4 + 40 + 3, "last byte": len(frame) - 1}[where]
    frame[index] ^= 0x04
    session.sock.sendall(bytes(frame))
    assert "authentication" in session.error_then_closed()
    assert point.calls["act"] == 0


def test_a_flipped_bit_from_the_server_is_caught_by_the_client(server, point):
    flipped = {"done": False}

    def tamper(record: bytearray, start: int, chunk: bytes) -> bytes:
        # Leave the challenge (frame 0) and the welcome (1) alone; flip a payload bit of the first reply (2).
        offset = 0
        for _ in range(2):
            if len(record) < offset + 4:
                return chunk
            offset += 4 + int.from_bytes(record[offset:offset + 4], "big")
        target = offset + 4 + 40 + 2
        if flipped["done"] or not start <= target < start + len(chunk):
            return chunk
        flipped["done"] = True
        data = bytearray(chunk)
        data[target - start] ^= 0x01
        return bytes(data)

    relay = Relay(server.address, tamper=tamper)
    robot = RemoteRobot(*relay.address, token=KEY)
    with pytest.raises(ProtocolError, match="authentication"):
        for _ in range(20):
            robot.observe()
    robot.close()


# ------------------------------------------------------------------------------- 5. deadlines and caps
def test_a_slow_drip_hello_is_cut_at_the_hello_deadline(point):
    srv = RobotServer(point, KEY, hello_timeout=0.5).start()
    try:
        sock = raw_connect(srv)
        hello = json.dumps({"v": 2, "op": "hello", "nonce": "ab" * 16}).encode()
        frame = len(hello).to_bytes(4, "big") + hello
        start = time.monotonic()
        drip(sock, frame, every=0.1)  # each recv alone is well within any per-recv timeout
        assert closed_by_server(sock, timeout=0.1)
        assert time.monotonic() - start < 1.2
        connect_when_free(srv)  # the operator gets in
    finally:
        srv.stop()


def test_a_slow_drip_frame_in_a_session_is_cut_and_the_robot_held(point):
    srv = RobotServer(point, KEY, keepalive_timeout=0.4).start()
    try:
        session = RawSession(srv)
        frame = session.frame(ACT)
        start = time.monotonic()
        drip(session.sock, frame, every=0.05)  # each byte well within the deadline, the whole frame not
        assert "deadline" in session.error_then_closed()
        assert point.calls["act"] == 0 and point.calls["hold"] == 1
        assert point.hold_times[0] - start < 0.4 + 0.3
    finally:
        srv.stop()


def test_unauthenticated_connections_are_capped(point):
    srv = RobotServer(point, KEY, max_unauthenticated=2, hello_timeout=5.0).start()
    try:
        silent = [raw_connect(srv), raw_connect(srv)]
        time.sleep(0.1)
        third = raw_connect(srv)
        assert closed_by_server(third, timeout=1.0)  # refused at once, not after the 5 s hello deadline
        assert srv.stats["refused_unauthenticated"] == 1
        for sock in silent:
            sock.close()
        connect_when_free(srv)
    finally:
        srv.stop()


# ------------------------------------------------------------------------------- 6. keepalive and hold
def test_a_silent_client_has_the_robot_held_within_one_deadline(point):
    srv = RobotServer(point, KEY, keepalive_timeout=0.3).start()
    try:
        session = RawSession(srv)
        assert session.request(ACT)["ok"] is True
        silent_since = time.monotonic()  # then nothing: a frozen client, or a half-open connection
        wait_for(lambda: point.calls["hold"] == 1)
        assert point.hold_times[0] - silent_since < 0.3 + 0.2
        assert "keepalive" in session.error_then_closed()
        assert connect_when_free(srv) < 0.5  # the session is free at once, not after 60 s
    finally:
        srv.stop()


def test_a_disconnect_holds_the_robot_at_once(point):
    srv = RobotServer(point, KEY, keepalive_timeout=5.0).start()
    try:
        session = RawSession(srv)
        assert session.request(ACT)["ok"] is True
        gone = time.monotonic()
        session.sock.close()  # no close request
        wait_for(lambda: point.calls["hold"] == 1)
        assert point.hold_times[0] - gone < 0.5
    finally:
        srv.stop()


def test_keepalives_keep_an_idle_client_connected(point):
    srv = RobotServer(point, KEY, keepalive_timeout=0.3).start()
    robot = RemoteRobot(*srv.address, token=KEY)
    try:
        robot.reset(seed=0)
        time.sleep(1.0)  # > 3 deadlines without a request: the client's keepalives count
        robot.act(np.array([0.1, 0.1], np.float32))
        assert point.calls["hold"] == 0 and srv.stats["keepalives"] >= 3
    finally:
        robot.close()
        srv.stop()
    assert point.calls["hold"] == 1  # a clean close holds too


def test_hold_and_stop_requests_reach_the_robot(server, point):
    robot = RemoteRobot(*server.address, token=KEY)
    robot.hold()
    robot.stop()
    robot.close()
    assert point.calls["hold"] >= 1 and point.calls["stop"] == 1


def test_sim_robot_hold_keeps_its_joint_positions():
    from deploy.robot import Robot
    from deploy.sim_robot import SimRobot

    drift = {}
    for held in (False, True):
        robot = SimRobot(horizon=50)
        assert isinstance(robot, Robot)
        robot.reset(seed=0)
        robot.act(np.ones(3, np.float32))  # a large step: the joints are still on their way to the target
        if held:
            robot.hold()
        env = robot._env.unwrapped  # the physics is only stepped by act(); step it by hand to see the hold
        before = np.array([s[0] for s in env._joint_states(env._body, env._joints)])
        for _ in range(40):
            env._step_sim()
        after = np.array([s[0] for s in env._joint_states(env._body, env._joints)])
        drift[held] = float(np.abs(after - before).max())
        robot.close()
    assert drift[True] < 0.2 * drift[False]


# ------------------------------------------------------------------------ 7. the server's own limits
def test_a_flood_is_paced_to_the_command_rate(point):
    srv = RobotServer(point, KEY, max_command_rate=100.0).start()
    try:
        session = RawSession(srv)
        session.sock.sendall(b"".join(session.frame(ACT) for _ in range(30)))  # as fast as TCP goes
        replies = [session.recv() for _ in range(30)]
        assert all(r["ok"] for r in replies)
        gaps = np.diff(point.act_times)
        assert gaps.min() >= 1 / 100 - 2e-3 and point.act_times[-1] - point.act_times[0] >= 29 / 100 - 1e-2
        assert srv.stats["paced"] > 0
    finally:
        srv.stop()


def test_the_server_limits_the_rate_of_change_as_the_runtime_does(server, point):
    robot = RemoteRobot(*server.address, token=KEY)
    robot.reset(seed=0)
    step = robot.act(np.array([1.0, 1.0], np.float32))  # from a hold: at most 0.5 per step
    assert step.info["rate_limited_by_server"] == 2
    robot.act(np.array([-1.0, 1.0], np.float32))
    rng = np.random.default_rng(0)
    for _ in range(30):
        robot.act(rng.uniform(-3, 3, 2).astype(np.float32))
    robot.close()
    sent = np.array(point.actions)
    np.testing.assert_allclose(sent[:2], [[0.5, 0.5], [0.0, 1.0]])
    assert np.abs(np.diff(sent, axis=0)).max() <= 0.5 + 1e-6 and np.abs(sent).max() <= 1.0
    assert point.invalid_actions == []


def test_the_server_safety_config_is_the_runtimes(point):
    srv = RobotServer(point, KEY, safety=SafetyConfig(max_action_rate=None)).start()
    try:
        robot = RemoteRobot(*srv.address, token=KEY)
        robot.act(np.array([1.5, -1.0], np.float32))
        robot.close()
        np.testing.assert_allclose(point.actions[0], [1.0, -1.0])  # clipped, not rate limited
    finally:
        srv.stop()


# --------------------------------------------------------------------------------- 8. the strict wire
@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_in_a_reset_task_are_malformed(server, point, constant):
    session = RawSession(server)
    session.send(b'{"op": "reset", "task": {"goal": [' + constant + b', 0.1, 0.4]}}')
    assert "malformed" in session.error_then_closed()
    assert point.untouched


@pytest.mark.parametrize("version", [True, 2.0, "2", None])
def test_a_version_must_be_the_integer(server, point, version):
    sock = raw_connect(server)
    send_json(sock, {"v": version, "op": "hello", "nonce": wire.new_nonce()})
    reply = json.loads(read_until_closed(sock)[4:])
    assert reply["ok"] is False and "version" in reply["error"]
    session = RawSession(server)  # in a request: an error, the session stays
    assert "version" in session.request({"v": version, "op": "observe"})["error"]
    assert session.request({"op": "observe"})["ok"] is True
    assert point.calls["observe"] == 1


def test_duplicate_keys_are_malformed(server, point):
    session = RawSession(server)
    session.send(b'{"op": "observe", "op": "act", "action": [1, 1]}')
    assert "duplicate" in session.error_then_closed()
    assert point.untouched


def test_a_lone_surrogate_gets_an_error_frame_not_a_traceback(server, point, caplog):
    sock = raw_connect(server)
    send_json(sock, {"v": 2, "op": "hello", "nonce": "\ud800", "token": "\udfff"})
    reply = json.loads(read_until_closed(sock)[4:])
    assert reply["ok"] is False and "surrogate" in reply["error"]
    session = RawSession(server)
    session.send(b'{"op": "reset", "task": {"\\ud800": 1}}')
    assert "surrogate" in session.error_then_closed()
    assert no_server_tracebacks(caplog) and server.stats["internal_errors"] == 0
    with pytest.raises(ValueError, match="key"):
        RobotServer(point, "\ud800")


def test_12k_malformed_frames_through_the_parser_raise_only_protocol_errors():
    from deploy.bridge_commands import RequestError, check_request

    rng, outcomes = random.Random(20240611), {"malformed": 0, "refused": 0, "accepted": 0}
    for _ in range(12_000):
        payload = malformed(rng)
        try:
            message = wire.parse_message(payload)
        except ProtocolError:
            outcomes["malformed"] += 1
            continue
        assert isinstance(message, dict)
        json.dumps(message, allow_nan=False).encode("utf-8")  # finite, no surrogates: re-encodable strictly
        try:
            check_request(message, action_dim=2)
            outcomes["accepted"] += 1
        except RequestError:
            outcomes["refused"] += 1
    assert min(outcomes.values()) > 30, outcomes


def test_malformed_frames_over_a_socket_get_an_error_frame_and_a_closed_session(server, point, caplog):
    rng = random.Random(7)
    session = RawSession(server)
    for _ in range(300):
        payload = malformed(rng)
        try:
            message, closes = wire.parse_message(payload), False
        except ProtocolError:
            message, closes = {}, True
        if message.get("op") in ("keepalive", "close"):
            continue  # no reply / a clean close: not what this test is about
        reply = session.request(payload)
        assert reply is not None and isinstance(reply["ok"], bool), payload
        if closes:
            assert reply["ok"] is False and reply["error"].startswith("malformed frame"), (payload, reply)
            assert closed_by_server(session.sock)
            session = RawSession(server)
    assert point.invalid_actions == [] and server.stats["internal_errors"] == 0 and no_server_tracebacks(caplog)
    robot = RemoteRobot(*server.address, token=KEY)  # still serving
    robot.reset(seed=0)
    robot.close()
