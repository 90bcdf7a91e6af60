"""`connect_robot`: the factory that picks a concrete `Robot` for an address, and the robot token.

It lives apart from the `Robot` protocol (:mod:`deploy.robot`) so that the protocol, the runtime and
the bridge never depend on the simulator: ``sim:`` addresses import :mod:`deploy.sim_robot` (pybullet)
only when one is opened.

Usage::

    robot = connect_robot("sim:kuka-0?horizon=50")       # or "tcp://10.0.0.7:7000" (token from env)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from deploy.bridge_client import RemoteRobot
from deploy.robot import Robot

TOKEN_ENV = "METAFLEET_ROBOT_TOKEN"
ADDRESS_FORMS = "'sim:<robot-id>[?family=reach&horizon=50]' or 'tcp://HOST:PORT'"
SPEC_FLOAT_KEYS = ("link_mass_scale", "joint_damping", "motor_strength")


def connect_robot(address: str, **kw: Any) -> Robot:
    """Open the robot at ``address``.

    - ``sim:<robot-id>[?key=value&...]`` -> :class:`deploy.sim_robot.SimRobot`; the id becomes
      ``RobotSpec.robot_id`` (model ``kuka_iiwa``); query keys: ``family``, ``horizon``, ``model``,
      ``link_mass_scale``, ``joint_damping``, ``motor_strength``. ``kw`` (family, horizon, task, render) are
      defaults the query overrides.
    - ``tcp://HOST:PORT`` -> :class:`deploy.bridge_client.RemoteRobot`; ``kw``: ``token`` (default: env
      ``METAFLEET_ROBOT_TOKEN``), ``timeout``.

    Raises ``ValueError`` for any other form, naming the expected ones.
    """
    if not isinstance(address, str):
        raise ValueError(f"robot address must be a string: {ADDRESS_FORMS}")
    if address.startswith("sim:"):
        from deploy.sim_robot import SimRobot  # pybullet loads only for a simulated robot

        return SimRobot(**{**kw, **_parse_sim(address)})
    if address.startswith("tcp://"):
        host, port = _parse_tcp(address)
        token = kw.pop("token", None) or os.environ.get(TOKEN_ENV, "")
        if not token:
            raise ValueError(f"robot {address!r} needs a token: set {TOKEN_ENV} or pass token=...")
        return RemoteRobot(host, port, token, **kw)
    raise ValueError(f"unknown robot address {address!r}; expected {ADDRESS_FORMS}")


def with_sim_defaults(address: str, **defaults: Any) -> str:
    """Add ``defaults`` (e.g. the policy's family and robot model) to a ``sim:`` address's query where the
    address does not set them; other addresses are returned unchanged.

    The query is rebuilt from parsed ``(key, value)`` pairs and re-encoded, never spliced as text: a default
    holding ``&`` or ``=`` stays one value of its own key (a manifest must not set the family through its
    robot model). A ``model`` default must name a known robot model (:data:`fleet.robots.ROBOT_MODELS`).

    >>> with_sim_defaults("sim:c-1?horizon=20", family="velocity", model="half_cheetah")
    'sim:c-1?horizon=20&family=velocity&model=half_cheetah'
    """
    if not isinstance(address, str) or not address.startswith("sim:"):
        return address
    head, _, query = address.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        return address  # a malformed query: `_parse_sim` refuses it, naming the expected form
    present = {key for key, _ in pairs}
    extra = {key: value for key, value in defaults.items() if key not in present and value is not None}
    if "model" in extra:
        _check_model(extra["model"])
    pairs += [(key, str(value)) for key, value in extra.items()]
    return head + ("?" + urlencode(pairs, safe=":/") if pairs else "")


def _check_model(model: Any) -> None:
    """Raise ValueError (naming the known ones) unless ``model`` is the name of a known robot model."""
    from fleet.robots import get_robot_model  # pure python; pybullet loads only with an env

    get_robot_model(model)


def _parse_sim(address: str) -> dict[str, Any]:
    """``sim:kuka-3?horizon=20&motor_strength=0.8`` -> SimRobot keyword arguments."""
    robot_id, _, query = address[len("sim:"):].partition("?")
    if not robot_id:
        raise ValueError(f"robot address {address!r} names no robot id; expected {ADDRESS_FORMS}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"robot address {address!r}: query must be key=value pairs joined by '&'") from None
    valid = ("family", "horizon", "model", *SPEC_FLOAT_KEYS)
    keys = [key for key, _ in pairs]
    unknown = sorted(set(keys) - set(valid))
    if unknown or len(set(keys)) != len(keys):
        raise ValueError(f"robot address {address!r}: unknown or repeated key(s) {unknown or keys}; "
                         f"valid: {', '.join(valid)}")
    options, spec = dict(pairs), {"robot_id": robot_id}
    out: dict[str, Any] = {}
    if "family" in options:
        out["family"] = options.pop("family")
    if "horizon" in options:
        out["horizon"] = _positive_int(address, "horizon", options.pop("horizon"))
    if "model" in options:
        spec["model"] = options.pop("model")
    for key, text in options.items():
        spec[key] = _finite_float(address, key, text)
    from fleet.robots import RobotSpec  # pure python; pybullet loads only with an env

    out["robot"] = RobotSpec.from_dict(spec)
    return out


def _positive_int(address: str, key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"robot address {address!r}: {key} must be a positive integer, got {text!r}")
    return value


def _finite_float(address: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"robot address {address!r}: {key} must be a finite number, got {text!r}")
    return value


def _parse_tcp(address: str) -> tuple[str, int]:
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None or port == 0 or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"robot address {address!r}: expected tcp://HOST:PORT with a port in 1..65535")
    return host, port


def read_token(token_file: str | None, required: bool = True) -> str:
    """The token from ``token_file`` (stripped) or ``$METAFLEET_ROBOT_TOKEN``; ValueError when required and empty."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read --token-file {token_file!r}: {exc}") from None
        if not token:
            raise ValueError(f"--token-file {token_file!r} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if required and not token:
        raise ValueError(f"a robot token is required: set {TOKEN_ENV} or pass --token-file FILE")
    return token
