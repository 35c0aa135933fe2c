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
    np.testing.assert_allclose(_np(restored(TIMES)[1]), _np(custom(TIMES)[1]), atol=0)
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


# --------------------------------------------------------------------------
# Discrete (DDPM) schedules, checked against the papers' formulas in numpy.


def np_linear_beta_alpha_bar(num_steps, beta_start, beta_end):
    """Ho et al. (2020): linear betas, alpha_bar_i = prod (1 - beta_j)."""
    betas = np.linspace(beta_start, beta_end, num_steps, dtype="float64")
    return betas, np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def np_iddpm_alpha_bar(num_steps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal (2021), eq. 17 and the clipping of section 3.2."""

    def f(t):
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = []
    for i in range(1, num_steps + 1):
        alpha_bar = f(i / num_steps) / f(0.0)
        alpha_bar_prev = f((i - 1) / num_steps) / f(0.0)
        betas.append(min(1.0 - alpha_bar / alpha_bar_prev, max_beta))
    betas = np.array(betas)
    return betas, np.concatenate([[1.0], np.cumprod(1.0 - betas)])


INDICES = [0, 1, 2, 10, 250, 500, 998, 999, 1000]


def _check_table(schedule, alpha_bar, indices=INDICES):
    num_steps = len(alpha_bar) - 1
    t = np.array(indices, "float32") / num_steps
    signal, noise = (_np(r) for r in schedule(t))
    expected = alpha_bar[indices]
    np.testing.assert_allclose(signal, np.sqrt(expected), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(noise, np.sqrt(1.0 - expected), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        _np(schedule.conditioning(t)), 1.0 - expected, rtol=1e-5, atol=1e-7
    )


def test_linear_beta_matches_ddpm():
    schedule = schedules.LinearBeta()
    assert schedule.num_steps == 1000
    betas, alpha_bar = np_linear_beta_alpha_bar(1000, 1e-4, 0.02)
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-12)
    np.testing.assert_allclose(schedule.alphas_cumprod, alpha_bar, rtol=1e-9)
    # Known value of DDPM's schedule: alpha_bar_T ~ 4.04e-5.
    assert 4.0e-5 < alpha_bar[-1] < 4.1e-5
    _check_table(schedule, alpha_bar)
    # Clean at t = 0, and noise rate sqrt(beta_1) = 0.01 at the first step.
    signal, noise = schedule(np.array([0.0, 0.001], "float32"))
    np.testing.assert_allclose(_np(signal)[0], 1.0)
    np.testing.assert_allclose(_np(noise), [0.0, 0.01], rtol=1e-5)


def test_linear_beta_custom_arguments():
    schedule = schedules.LinearBeta(num_steps=50, beta_start=1e-3, beta_end=0.2)
    _, alpha_bar = np_linear_beta_alpha_bar(50, 1e-3, 0.2)
    _check_table(schedule, alpha_bar, [0, 1, 7, 25, 49, 50])
    single = schedules.LinearBeta(num_steps=1, beta_start=0.3, beta_end=0.5)
    np.testing.assert_allclose(single.betas, [0.3])
    np.testing.assert_allclose(_np(single(1.0)[0]), math.sqrt(0.7), rtol=1e-6)


@pytest.mark.parametrize(
    "num_steps,offset,max_beta", [(1000, 0.008, 0.999), (50, 0.02, 0.5)]
)
def test_iddpm_cosine_matches_paper(num_steps, offset, max_beta):
    schedule = schedules.IDDPMCosine(num_steps, offset, max_beta)
    betas, alpha_bar = np_iddpm_alpha_bar(num_steps, offset, max_beta)
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(
        schedule.alphas_cumprod, alpha_bar, rtol=1e-9, atol=1e-20
    )
    indices = sorted({0, 1, 2, num_steps // 4, num_steps // 2, num_steps - 1})
    _check_table(schedule, alpha_bar, indices + [num_steps])
    # The last beta is clipped (f(1) = 0 would give beta_T = 1), and the
    # table follows f(t) / f(0) wherever no clipping happened before.
    assert schedule.betas[-1] == max_beta
    assert np.all(schedule.betas <= max_beta)
    clipped = np.flatnonzero(betas == max_beta)
    first = clipped[0] if clipped.size else num_steps
    t = np.arange(first + 1) / num_steps
    f = np.cos((t + offset) / (1 + offset) * np.pi / 2) ** 2
    np.testing.assert_allclose(
        schedule.alphas_cumprod[: first + 1], f / f[0], rtol=1e-9
    )


def test_iddpm_default_clips_only_the_end():
    betas, _ = np_iddpm_alpha_bar(1000)
    schedule = schedules.IDDPMCosine()
    assert (
        np.flatnonzero(schedule.betas == 0.999).tolist()
        == np.flatnonzero(betas == 0.999).tolist()
    )
    assert np.all(schedule.betas[:990] < 0.5)


def test_discrete_rounds_times_to_the_nearest_step():
    schedule = schedules.LinearBeta(num_steps=10, beta_start=0.01, beta_end=0.3)
    _, alpha_bar = np_linear_beta_alpha_bar(10, 0.01, 0.3)
    t = np.array([-0.5, 0.0, 0.03, 0.07, 0.44, 0.46, 0.96, 1.0, 1.7], "float32")
    indices = [0, 0, 0, 1, 4, 5, 10, 10, 10]
    signal, noise = (_np(r) for r in schedule(t))
    np.testing.assert_allclose(signal, np.sqrt(alpha_bar[indices]), rtol=1e-6)
    np.testing.assert_allclose(noise, np.sqrt(1.0 - alpha_bar[indices]), rtol=1e-6)
    # Any shape; integer times are cast.
    t2 = np.array([[0.1, 0.2], [0.3, 1.0]], "float32")
    signal2, _ = schedule(t2)
    assert tuple(signal2.shape) == (2, 2)
    np.testing.assert_allclose(
        _np(signal2), np.sqrt(alpha_bar[[[1, 2], [3, 10]]]), rtol=1e-6
    )
    np.testing.assert_allclose(
        _np(schedule(np.array([0, 1]))[0]),
        np.sqrt(alpha_bar[[0, 10]]),
        rtol=1e-6,
    )


def test_discrete_schedule_in_compiled_function():
    from keras_immiscible.backend import compiled

    schedule = schedules.IDDPMCosine(num_steps=20)
    _, alpha_bar = np_iddpm_alpha_bar(20)

    def rates(t):
        signal, noise = schedule(t)
        return signal * 1.0, noise * 1.0, schedule.conditioning(t)

    fn = compiled(rates, ("test_discrete_schedule_in_compiled_function",))
    t = np.array([0.05, 0.5, 0.97], "float32")
    signal, _, conditioning = (_np(r) for r in fn(t))
    np.testing.assert_allclose(signal, np.sqrt(alpha_bar[[1, 10, 19]]), rtol=1e-5)
    np.testing.assert_allclose(conditioning, 1.0 - alpha_bar[[1, 10, 19]], rtol=1e-5)


def test_discrete_sample_times_on_the_grid():
    schedule = schedules.LinearBeta(num_steps=10)
    t = _np(schedule.sample_times(20000, seed=5))
    assert t.shape == (20000,) and t.dtype == np.float32
    steps = t * 10
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-5)
    counts = np.bincount(np.round(steps).astype(int), minlength=11)
    # Never the clean step 0; each of the 10 steps ~2000 times (sd ~42).
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] - 2000) < 250), counts
    np.testing.assert_array_equal(_np(schedule.sample_times(20000, seed=5)), t)
    generator = keras.random.SeedGenerator(2)
    a = _np(schedule.sample_times(64, seed=generator))
    b = _np(schedule.sample_times(64, seed=generator))
    assert not np.array_equal(a, b)


def test_discrete_schedule_from_betas():
    betas = [0.1, 0.2, 0.3]
    schedule = schedules.DiscreteSchedule(betas)
    assert schedule.num_steps == 3
    alpha_bar = np.cumprod([1.0, 0.9, 0.8, 0.7])
    np.testing.assert_allclose(schedule.alphas_cumprod, alpha_bar)
    _check_table(schedule, alpha_bar, [0, 1, 2, 3])
    config = json.loads(json.dumps(schedules.serialize(schedule)))
    restored = schedules.get(config)
    assert type(restored) is schedules.DiscreteSchedule
    np.testing.assert_allclose(restored.betas, betas)


def test_linear_interpolation():
    schedule = schedules.LinearInterpolation()
    t = np.array([0.0, 0.1, 0.5, 0.9, 1.0], "float32")
    signal, noise = (_np(r) for r in schedule(t))
    np.testing.assert_allclose(signal, 1.0 - t)
    np.testing.assert_allclose(noise, t)
    np.testing.assert_allclose(_np(schedule.conditioning(t)), t)
    # Not variance preserving.
    assert np.all(signal[1:-1] ** 2 + noise[1:-1] ** 2 < 1.0)
    times = _np(schedule.sample_times(4096, seed=0))
    assert times.min() >= 0.0 and times.max() <= 1.0
    assert abs(times.mean() - 0.5) < 0.02


@pytest.mark.parametrize(
    "name,cls,config",
    [
        (
            "linear_beta",
            schedules.LinearBeta,
            {"num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
        ),
        (
            "iddpm_cosine",
            schedules.IDDPMCosine,
            {"num_steps": 1000, "offset": 0.008, "max_beta": 0.999},
        ),
        ("linear_interpolation", schedules.LinearInterpolation, {}),
        (
            "cosine",
            schedules.CosineSchedule,
            {"min_signal_rate": 0.02, "max_signal_rate": 0.95},
        ),
    ],
)
def test_new_aliases_and_round_trip(name, cls, config):
    schedule = schedules.get(name)
    assert type(schedule) is cls
    assert schedules.get(name.upper()).get_config() == config
    assert schedule.get_config() == config
    serialized = json.loads(json.dumps(schedules.serialize(schedule)))
    restored = schedules.get(serialized)
    assert type(restored) is cls and restored.get_config() == config
    generic = keras.saving.deserialize_keras_object(serialized)
    assert type(generic) is cls
    t = np.array([0.0, 0.3, 1.0], "float32")
    np.testing.assert_array_equal(_np(restored(t)[1]), _np(schedule(t)[1]))
    assert repr(schedule).startswith(cls.__name__ + "(")


def test_custom_discrete_round_trip():
    schedule = schedules.IDDPMCosine(num_steps=64, offset=0.01, max_beta=0.9)
    restored = schedules.get(json.loads(json.dumps(schedules.serialize(schedule))))
    assert restored.get_config() == {
        "num_steps": 64,
        "offset": 0.01,
        "max_beta": 0.9,
    }
    np.testing.assert_array_equal(restored.betas, schedule.betas)
    plain = schedules.get({"class_name": "LinearBeta", "config": {"num_steps": 8}})
    assert plain.num_steps == 8 and plain.beta_end == 0.02
    assert repr(plain) == "LinearBeta(num_steps=8, beta_start=0.0001, beta_end=0.02)"


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"num_steps": -5}, ValueError, "num_steps"),
        ({"num_steps": 2.5}, TypeError, "num_steps"),
        ({"num_steps": True}, TypeError, "num_steps"),
        ({"num_steps": "10"}, TypeError, "num_steps"),
        ({"beta_start": 0.0}, ValueError, "beta_start"),
        ({"beta_start": -1e-4}, ValueError, "beta_start"),
        ({"beta_start": 0.03, "beta_end": 0.02}, ValueError, "beta_end"),
        ({"beta_end": 1.0}, ValueError, "beta_end"),
        ({"beta_end": "big"}, TypeError, "beta_end"),
        ({"beta_start": float("nan")}, ValueError, "beta_start"),
    ],
)
def test_linear_beta_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        schedules.LinearBeta(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"num_steps": 10.0}, TypeError, "num_steps"),
        ({"offset": -0.1}, ValueError, "offset"),
        ({"offset": None}, TypeError, "offset"),
        ({"max_beta": 0.0}, ValueError, "max_beta"),
        ({"max_beta": 1.0}, ValueError, "max_beta"),
        ({"max_beta": float("inf")}, ValueError, "max_beta"),
    ],
)
def test_iddpm_cosine_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        schedules.IDDPMCosine(**kwargs)


@pytest.mark.parametrize(
    "betas,error",
    [
        ([], ValueError),
        ([[0.1, 0.2]], ValueError),
        ([0.1, 1.0], ValueError),
        ([0.0, 0.1], ValueError),
        ([0.1, float("nan")], ValueError),
        (["a", "b"], TypeError),
        (None, ValueError),
    ],
)
def test_discrete_schedule_bad_betas(betas, error):
    with pytest.raises(error, match="betas"):
        schedules.DiscreteSchedule(betas)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda: schedules.LinearBeta(num_steps=2.5),
            TypeError,
            "`num_steps` must be a positive int, got 2.5.",
        ),
        (
            lambda: schedules.LinearBeta(beta_start=0.03, beta_end=0.02),
            ValueError,
            "`beta_end` must be a number in [0.03, 1), got 0.02.",
        ),
        (
            lambda: schedules.IDDPMCosine(max_beta=1.0),
            ValueError,
            "`max_beta` must be a number in (0, 1), got 1.0.",
        ),
        (
            lambda: schedules.IDDPMCosine(offset=None),
            TypeError,
            "`offset` must be a number >= 0, got None.",
        ),
        (
            lambda: schedules.CosineSchedule("low", 0.9),
            TypeError,
            "`min_signal_rate` must be a finite number, got 'low'.",
        ),
    ],
)
def test_schedule_argument_messages(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert str(info.value) == message
