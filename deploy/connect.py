"""`connect_robot`: the factory that picks a concrete `Robot` for an address, and the robot token.

It lives apart from the `Robot` protocol (:mod:`deploy.robot`) so that the protocol, the runtime and
the bridge never depend on the simulator: ``sim:`` addresses import :mod:`deploy.sim_robot` (pybullet)
only when one is opened.

Usage::

    robot = connect_robot("sim:kuka-0?horizon=50")       # or "tcp://10.0.0.7:7000" (token from env)
    robot = connect_robot("sim:kuka-new-3?fleet_file=configs/fleets/kuka-gains.yaml&family=robot_reach")
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
FLEET_KEYS = ("fleet_file", "fleet_seed")  # a robot of a fleet spec file: only ever from the operator's address


def connect_robot(address: str, **kw: Any) -> Robot:
    """Open the robot at ``address``.

    - ``sim:<robot-id>[?key=value&...]`` -> :class:`deploy.sim_robot.SimRobot`; the id becomes
      ``RobotSpec.robot_id`` (model ``kuka_iiwa``); query keys: ``family``, ``horizon``, ``model``,
      ``link_mass_scale``, ``joint_damping``, ``motor_strength``. ``kw`` (family, horizon, task, render) are
      defaults the query overrides.
    - ``sim:<robot-id>?fleet_file=PATH[&fleet_seed=N][&family=...&horizon=...]`` -> the robot of that fleet spec
      file (:func:`fleet.fleetspec.load_fleet_file`, PATH relative to the working directory) called
      ``<robot-id>``, held-out ones included, joint gains and all; the file names the whole robot, so ``model``
      and the variation keys are refused beside it.
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
    robot model). A ``model`` default must name a known robot model (:data:`fleet.robots.ROBOT_MODELS`), and is
    left out where the address names a ``fleet_file`` (the file names the robot's model). A fleet file comes from
    the operator's own address only: a ``fleet_file`` / ``fleet_seed`` default is refused.

    >>> with_sim_defaults("sim:c-1?horizon=20", family="velocity", model="half_cheetah")
    'sim:c-1?horizon=20&family=velocity&model=half_cheetah'
    """
    if not isinstance(address, str) or not address.startswith("sim:"):
        return address
    if any(key in defaults for key in FLEET_KEYS):
        raise ValueError(f"a fleet file comes from the robot address only, never as a default: {sorted(defaults)}")
    head, _, query = address.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        return address  # a malformed query: `_parse_sim` refuses it, naming the expected form
    present = {key for key, _ in pairs}
    if "fleet_file" in present:
        present.add("model")  # the file's robot has its own model
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
    valid = ("family", "horizon", "model", *SPEC_FLOAT_KEYS, *FLEET_KEYS)
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
    if "fleet_file" in options or "fleet_seed" in options:
        out["robot"] = _fleet_robot(address, robot_id, options)
        return out
    if "model" in options:
        spec["model"] = options.pop("model")
    for key, text in options.items():
        spec[key] = _finite_float(address, key, text)
    from fleet.robots import RobotSpec  # pure python; pybullet loads only with an env

    out["robot"] = RobotSpec.from_dict(spec)
    return out


def _fleet_robot(address: str, robot_id: str, options: dict[str, str]):
    """The robot ``robot_id`` of the address's ``fleet_file`` (seeded by ``fleet_seed``, default the file's seed);
    a ValueError naming the id and listing the file's robots (held-out ones marked) when it holds no such robot."""
    from fleet.fleetspec import load_fleet_file  # pure python; pybullet loads only with an env

    path, seed = options.pop("fleet_file", None), options.pop("fleet_seed", None)
    if not path:
        raise ValueError(f"robot address {address!r}: fleet_seed goes with fleet_file=PATH (a fleet spec file)")
    if options:  # the file names the whole robot: a second source of its model or variation would be ambiguous
        raise ValueError(f"robot address {address!r}: fleet_file names the whole robot; drop "
                         f"{', '.join(sorted(options))}")
    fleet = load_fleet_file(path, None if seed is None else _positive_int(address, "fleet_seed", seed, minimum=0))
    by_id = {robot.robot_id: robot for robot in fleet.robots}
    if robot_id not in by_id:
        listed = [r.robot_id for r in fleet.train] + [f"{r.robot_id} (held out)" for r in fleet.test]
        raise ValueError(f"robot address {address!r}: fleet file {path!r} holds no robot {robot_id!r}; its robots: "
                         f"{', '.join(listed)}")
    return by_id[robot_id]


def check_address(address: str) -> None:
    """Parse ``address`` as :func:`connect_robot` would, opening nothing (a ``sim:`` fleet file is read): a bad
    address fails before any episode starts."""
    if isinstance(address, str) and address.startswith("sim:"):
        _parse_sim(address)
    elif isinstance(address, str) and address.startswith("tcp://"):
        _parse_tcp(address)
    else:
        raise ValueError(f"unknown robot address {address!r}; expected {ADDRESS_FORMS}")


def _positive_int(address: str, key: str, text: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"robot address {address!r}: {key} must be {what}, got {text!r}")
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
