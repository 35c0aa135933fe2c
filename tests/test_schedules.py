import json
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_immiscible import schedules


def _np(x):
    return keras.ops.convert_to_numpy(x)


def np_cosine(t, min_signal_rate, max_signal_rate):
    t = np.asarray(t, dtype="float64")
    start, end = np.arccos(max_signal_rate), np.arccos(min_signal_rate)
    angle = start + t * (end - start)
    return np.cos(angle), np.sin(angle)


TIMES = np.array([0.0, 0.05, 0.25, 0.5, 0.77, 0.99, 1.0], dtype="float32")


@pytest.mark.parametrize("rates", [(0.02, 0.95), (0.1, 0.5), (1e-4, 1.0)])
def test_cosine_matches_closed_form(rates):
    schedule = schedules.CosineSchedule(*rates)
    signal, noise = schedule(TIMES)
    expected_signal, expected_noise = np_cosine(TIMES, *rates)
    np.testing.assert_allclose(_np(signal), expected_signal, atol=1e-6)
    np.testing.assert_allclose(_np(noise), expected_noise, atol=1e-6)
    np.testing.assert_allclose(
        _np(schedule.conditioning(TIMES)), expected_noise**2, atol=1e-6
    )
    # Endpoints.
    np.testing.assert_allclose(_np(signal)[[0, -1]], rates[::-1], atol=1e-6)


def test_cosine_default_values():
    schedule = schedules.CosineSchedule()
    assert schedule.min_signal_rate == 0.02
    assert schedule.max_signal_rate == 0.95
    signal, noise = schedule(np.float32(0.5))
    angle = 0.5 * (math.acos(0.95) + math.acos(0.02))
    np.testing.assert_allclose(_np(signal), math.cos(angle), atol=1e-6)
    np.testing.assert_allclose(_np(noise), math.sin(angle), atol=1e-6)


def test_cosine_variance_preserving_and_shape():
    schedule = schedules.CosineSchedule(0.02, 0.95)
    t = np.random.default_rng(0).uniform(size=(4, 3, 1, 1)).astype("float32")
    signal, noise = schedule(t)
    assert tuple(signal.shape) == tuple(noise.shape) == (4, 3, 1, 1)
    np.testing.assert_allclose(
        _np(signal) ** 2 + _np(noise) ** 2, np.ones(t.shape), atol=1e-6
    )
    assert tuple(schedule.conditioning(t).shape) == t.shape


def test_cosine_is_monotone():
    schedule = schedules.CosineSchedule(0.02, 0.95)
    t = np.linspace(0.0, 1.0, 101).astype("float32")
    signal, noise = (_np(r) for r in schedule(t))
    conditioning = _np(schedule.conditioning(t))
    assert np.all(np.diff(signal) < 0)
    assert np.all(np.diff(noise) > 0)
    assert np.all(np.diff(conditioning) > 0)


def test_integer_times_are_cast_to_float():
    signal, noise = schedules.CosineSchedule(0.1, 0.9)(np.array([0, 1]))
    assert "float" in keras.backend.standardize_dtype(signal.dtype)
    np.testing.assert_allclose(_np(signal), [0.9, 0.1], atol=1e-6)


def test_sample_times():
    schedule = schedules.CosineSchedule()
    t = _np(schedule.sample_times(4096, seed=3))
    assert t.shape == (4096,)
    assert t.dtype == np.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    # Uniform: mean 1/2, variance 1/12 (standard errors ~0.0045, ~0.0013).
    assert abs(t.mean() - 0.5) < 0.02
    assert abs(t.var() - 1.0 / 12.0) < 0.006
    np.testing.assert_array_equal(_np(schedule.sample_times(4096, seed=3)), t)
    assert not np.array_equal(_np(schedule.sample_times(4096, seed=4)), t)


def test_sample_times_with_seed_generator():
    schedule = schedules.CosineSchedule()
    first = schedule.sample_times(8, seed=keras.random.SeedGenerator(1))
    again = schedule.sample_times(8, seed=keras.random.SeedGenerator(1))
    np.testing.assert_array_equal(_np(first), _np(again))
    generator = keras.random.SeedGenerator(1)
    a = _np(schedule.sample_times(8, seed=generator))
    b = _np(schedule.sample_times(8, seed=generator))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    "rates",
    [(0.5, 0.4), (0.5, 0.5), (0.0, 0.5), (-0.1, 0.5), (0.1, 1.5)],
)
def test_cosine_bad_arguments(rates):
    with pytest.raises(ValueError, match="min_signal_rate"):
        schedules.CosineSchedule(*rates)


def test_cosine_non_numeric_argument():
    with pytest.raises(TypeError, match="min_signal_rate"):
        schedules.CosineSchedule("low", 0.9)


def test_get_and_serialize():
    assert isinstance(schedules.get(None), schedules.CosineSchedule)
    default = schedules.get("cosine")
    assert isinstance(default, schedules.CosineSchedule)
    assert default.get_config() == {
        "min_signal_rate": 0.02,
        "max_signal_rate": 0.95,
    }
    custom = schedules.CosineSchedule(0.1, 0.8)
    assert schedules.get(custom) is custom

    config = json.loads(json.dumps(schedules.serialize(custom)))
    restored = schedules.get(config)
    assert isinstance(restored, schedules.CosineSchedule)
    assert restored.get_config() == custom.get_config()
    np.testing.assert_allclose(
        _np(restored(TIMES)[1]), _np(custom(TIMES)[1]), atol=0
    )
    # Generic Keras deserialization (the class is registered).
    generic = keras.saving.deserialize_keras_object(config)
    assert isinstance(generic, schedules.CosineSchedule)
    # A plain {"class_name", "config"} dict naming a built-in schedule.
    plain = schedules.get(
        {"class_name": "CosineSchedule", "config": {"min_signal_rate": 0.2}}
    )
    assert plain.min_signal_rate == 0.2 and plain.max_signal_rate == 0.95


def test_get_bad_identifier():
    with pytest.raises(ValueError, match="cosine"):
        schedules.get("linear-beta-nonexistent")
    with pytest.raises(ValueError, match="cosine"):
        schedules.get(3)


def test_base_schedule():
    class Interpolation(schedules.Schedule):
        def __call__(self, t):
            t = self._convert_time(t)
            return 1.0 - t, t

    schedule = Interpolation()
    t = np.array([0.0, 0.25, 1.0], "float32")
    signal, noise = schedule(t)
    np.testing.assert_allclose(_np(signal), 1.0 - t)
    np.testing.assert_allclose(_np(schedule.conditioning(t)), t)
    assert tuple(schedule.sample_times(5, seed=0).shape) == (5,)
    assert schedule.get_config() == {}
    assert isinstance(Interpolation.from_config({}), Interpolation)
    with pytest.raises(NotImplementedError):
        schedules.Schedule()(t)
    assert isinstance(ops.convert_to_tensor(signal), type(signal))
