"""SafetyLayer: bounded, rate-limited, finite actions; schema-checked observations; safe stops."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.safety import ObservationSchemaError, SafetyConfig, SafetyLayer

LOW, HIGH = -np.ones(3, np.float32), np.ones(3, np.float32)
OBS = np.zeros(5, np.float32)


def layer(rate=0.5):
    return SafetyLayer((5,), LOW, HIGH, SafetyConfig(max_action_rate=rate))


def test_clips_to_bounds_without_rate_limit():
    safety = layer(rate=None)
    action, info = safety.filter(OBS, np.array([2.0, -3.0, 0.25]))
    np.testing.assert_array_equal(action, [1.0, -1.0, 0.25])
    assert action.dtype == np.float32
    assert info == {"safe_stop": False, "reason": None, "clipped": 2, "rate_limited": 0}
    assert safety.counters == {"steps": 1, "safe_stops": 0, "clipped": 1, "rate_limited": 0}


def test_rate_limits_relative_to_previous_action_and_ramps_from_hold_after_reset():
    safety = layer(rate=0.5)
    first, info = safety.filter(OBS, np.array([1.0, -1.0, 0.2]))
    np.testing.assert_allclose(first, [0.5, -0.5, 0.2])  # from the hold (zeros) after construction
    assert info["rate_limited"] == 2 and info["clipped"] == 0
    second, _ = safety.filter(OBS, np.array([1.0, 1.0, 0.2]))
    np.testing.assert_allclose(second, [1.0, 0.0, 0.2])
    safety.reset()
    third, _ = safety.filter(OBS, np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(third, [0.5, 0.5, 0.5])
    assert safety.counters["rate_limited"] == 3


def test_nan_observation_is_a_safe_stop_that_ramps_to_the_hold():
    safety = layer()
    safety.filter(OBS, np.array([0.4, 0.4, 0.4]))
    obs = OBS.copy()
    obs[2] = np.nan
    action, info = safety.filter(obs, np.array([0.5, 0.5, 0.5]))
    np.testing.assert_allclose(action, [0.36] * 3, atol=1e-6)  # one step of the default 10-step (0.5 s) ramp
    assert info["safe_stop"] is True and "observation" in info["reason"]
    assert safety.counters["safe_stops"] == 1
    after, _ = safety.filter(OBS, np.array([1.0, 1.0, 1.0]))  # motion resumes rate-limited from the ramp
    np.testing.assert_allclose(after, [0.86] * 3, atol=1e-6)
    safety.filter(obs, None)
    assert len(safety.ramp_to_hold()) == 9 and safety.holding  # the rest of the ramp, then the hold
    after, _ = safety.filter(OBS, np.array([1.0, 1.0, 1.0]))  # from the hold: ramps up again from zero
    np.testing.assert_allclose(after, [0.5, 0.5, 0.5])


@pytest.mark.parametrize("bad", [[np.nan, 0, 0], [0, np.inf, 0], [0, 0, -np.inf], None, [0.1, 0.2]])
def test_bad_proposed_action_is_a_safe_stop(bad):
    action, info = layer().filter(OBS, None if bad is None else np.array(bad, dtype=np.float64))
    np.testing.assert_array_equal(action, np.zeros(3))
    assert info["safe_stop"] is True and info["reason"]


@pytest.mark.parametrize(
    ("obs", "fragments"),
    [
        (np.zeros(4), ["shape (4,)", "expected (5,)"]),
        (np.zeros((1, 5)), ["shape (1, 5)", "expected (5,)"]),
        (np.array(["a"] * 5), ["numeric", "(5,)"]),
        ([[1, 2], [3]], ["not an array of numbers"]),
        (np.array([True] * 5), ["numeric", "bool"]),
    ],
)
def test_schema_error_names_expected_and_got(obs, fragments):
    with pytest.raises(ObservationSchemaError) as err:
        layer().check_observation(obs)
    assert isinstance(err.value, ValueError)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_check_observation_accepts_ints_and_returns_float32():
    out = layer().check_observation(np.arange(5))
    assert out.dtype == np.float32 and out.shape == (5,)


@pytest.mark.parametrize("kwargs", [{"max_action_rate": 0}, {"max_action_rate": float("nan")},
                                    {"max_action_rate": True}, {"safe_action": "home"}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        SafetyConfig(**kwargs)


def test_bounds_must_be_finite_and_hold_the_safe_action():
    with pytest.raises(ValueError, match="finite"):
        SafetyLayer((5,), [-np.inf] * 3, HIGH)
    with pytest.raises(ValueError, match="safe action"):
        SafetyLayer((5,), [0.1] * 3, HIGH)


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
anything = st.floats(width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(anything, min_size=3, max_size=3), st.booleans()), min_size=1, max_size=20),
       st.sampled_from([None, 0.1, 0.5]))
def test_every_output_is_finite_bounded_and_rate_limited(steps, rate):
    safety = layer(rate)
    previous = np.zeros(3, np.float32)
    for proposal, nan_obs in steps:
        obs = np.full(5, np.nan if nan_obs else 0.0, np.float32)
        action, info = safety.filter(obs, np.array(proposal, np.float32))
        assert action.shape == (3,) and action.dtype == np.float32
        assert np.isfinite(action).all() and (action >= LOW).all() and (action <= HIGH).all()
        if info["safe_stop"]:  # a step of the ramp: toward the hold, never past it
            assert (np.abs(action) <= np.abs(previous)).all() and (action * previous >= 0).all()
        if rate is not None:
            assert (np.abs(action - previous) <= np.float32(rate) + 1e-6).all()
        previous = action
