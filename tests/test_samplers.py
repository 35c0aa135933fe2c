import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_immiscible import samplers
from keras_immiscible import schedules

MU, STD = 0.3, 0.5


def _np(x):
    return keras.ops.convert_to_numpy(x)


def gaussian_denoiser(schedule, mu=MU, std=STD):
    """Optimal (pred_noise, pred_data) for data ~ N(mu, std^2 I)."""

    def denoise(x_t, t):
        signal, noise = schedule(t)
        shape = (-1,) + (1,) * (len(x_t.shape) - 1)
        a = ops.reshape(signal, shape)
        b = ops.reshape(noise, shape)
        pred_noise = b * (x_t - a * mu) / (a**2 * std**2 + b**2)
        pred_data = (x_t - b * pred_noise) / a
        return pred_noise, pred_data

    return denoise


def np_cosine(t, min_signal_rate, max_signal_rate):
    start, end = np.arccos(max_signal_rate), np.arccos(min_signal_rate)
    angle = start + t * (end - start)
    return np.cos(angle), np.sin(angle)


def np_gaussian_predictions(x, a, b, mu=MU, std=STD):
    pred_noise = b * (x - a * mu) / (a**2 * std**2 + b**2)
    return pred_noise, (x - b * pred_noise) / a


def np_ddim_eta0(x, rates, steps):
    """Hand-written deterministic DDIM in float64."""
    x = np.asarray(x, dtype="float64")
    for step in range(steps):
        t = 1.0 - step / steps
        a, b = np_cosine(t, *rates)
        pred_noise, pred_data = np_gaussian_predictions(x, a, b)
        next_a, next_b = np_cosine(t - 1.0 / steps, *rates)
        x = next_a * pred_data + next_b * pred_noise
    return pred_data


def np_exact_moments(rates, steps, eta):
    """Exact mean and variance of the DDIM output for Gaussian data.

    With the optimal Gaussian denoiser every DDIM step is an affine map of
    x_t plus independent Gaussian noise, so starting from N(0, 1) the iterate
    stays Gaussian; propagate its mean and variance exactly.
    """
    mean, var = 0.0, 1.0
    for step in range(steps):
        t = 1.0 - step / steps
        a, b = np_cosine(t, *rates)
        k = b / (a**2 * STD**2 + b**2)
        # pred_noise = k * x - k * a * MU ; pred_data = (x - b * pred_noise) / a
        data_gain, data_offset = (1.0 - b * k) / a, b * k * MU
        if step == steps - 1:
            return data_gain * mean + data_offset, data_gain**2 * var
        next_a, next_b = np_cosine(t - 1.0 / steps, *rates)
        sigma2 = eta**2 * next_b**2 / b**2 * (1.0 - a**2 / next_a**2)
        sigma2 = min(sigma2, next_b**2)
        c = np.sqrt(next_b**2 - sigma2)
        gain = next_a * data_gain + c * k
        offset = next_a * data_offset - c * k * a * MU
        mean, var = gain * mean + offset, gain**2 * var + sigma2


def _initial_noise(batch, seed=0):
    return keras.random.normal((batch, 8, 8, 1), seed=seed)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_recovers_gaussian_data(eta):
    # Endpoints close to pure data / pure noise. DDIM's discretization error
    # shrinks the std (by 3% for eta=0 and 6% for eta=1 with 50 steps, see
    # np_exact_moments); 200 steps bring it under 2%.
    rates = (1e-4, 0.9999)
    steps = 200
    schedule = schedules.CosineSchedule(*rates)
    sampler = samplers.DDIM(eta=eta)
    samples = _np(
        sampler.sample(
            gaussian_denoiser(schedule),
            _initial_noise(2000),
            schedule,
            steps,
            seed=1,
        )
    )
    assert samples.shape == (2000, 8, 8, 1)
    assert abs(samples.mean() - MU) < 0.01
    assert abs(samples.std() - STD) < 0.015
    # Agrees with the exact moments of the discretized sampler too (the
    # standard errors of the sample mean and std are about 0.0014 and 0.001).
    mean, var = np_exact_moments(rates, steps, eta)
    assert abs(mean - MU) < 0.01 and abs(np.sqrt(var) - STD) < 0.015
    assert abs(samples.mean() - mean) < 0.006
    assert abs(samples.std() - np.sqrt(var)) < 0.005


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_default_schedule_exact_moments(eta):
    # With the keras.io schedule the endpoints are far from exact, so the
    # output distribution differs from the data's; it must however match the
    # exact Gaussian moments of the discretized sampler.
    schedule = schedules.CosineSchedule()
    steps = 10
    samples = _np(
        samplers.DDIM(eta=eta).sample(
            gaussian_denoiser(schedule),
            _initial_noise(2000),
            schedule,
            steps,
            seed=2,
        )
    )
    mean, var = np_exact_moments((0.02, 0.95), steps, eta)
    n = samples.size
    assert abs(samples.mean() - mean) < 5 * np.sqrt(var / n) + 1e-4
    assert abs(samples.var() / var - 1.0) < 5 * np.sqrt(2.0 / n) + 1e-4
    # The variance is noticeably off the data's (a non-vacuous check).
    assert abs(np.sqrt(var) - STD) > 0.02


def test_ddim_eta0_matches_numpy_loop_and_is_deterministic():
    schedule = schedules.CosineSchedule()
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 1)).astype("float32")
    sampler = samplers.DDIM()
    denoise = gaussian_denoiser(schedule)
    first = _np(sampler.sample(denoise, x, schedule, steps=7))
    second = _np(sampler.sample(denoise, x, schedule, steps=7, seed=99))
    np.testing.assert_array_equal(first, second)
    expected = np_ddim_eta0(x, (0.02, 0.95), 7)
    np.testing.assert_allclose(first, expected, atol=2e-5, rtol=1e-5)


def test_ddim_passes_batched_times_and_returns_last_prediction():
    schedule = schedules.CosineSchedule()
    calls = []
    x = np.full((2, 3), 0.5, "float32")

    def denoise(x_t, t):
        calls.append(_np(t))
        return ops.zeros_like(x_t), ops.ones_like(x_t) * float(len(calls))

    out = _np(samplers.DDIM().sample(denoise, x, schedule, steps=4))
    assert len(calls) == 4
    for step, t in enumerate(calls):
        assert t.shape == (2,)
        np.testing.assert_allclose(t, [1.0 - step / 4] * 2, atol=1e-7)
    np.testing.assert_array_equal(out, np.full((2, 3), 4.0))


def test_ddim_single_step_is_first_prediction():
    schedule = schedules.CosineSchedule()
    x = np.random.default_rng(1).normal(size=(2, 2, 2, 1)).astype("float32")
    out = _np(
        samplers.DDIM().sample(gaussian_denoiser(schedule), x, schedule, 1)
    )
    a, b = np_cosine(1.0, 0.02, 0.95)
    np.testing.assert_allclose(
        out, np_gaussian_predictions(x.astype("float64"), a, b)[1], rtol=1e-4
    )


def test_ddim_stochastic_seeding():
    schedule = schedules.CosineSchedule()
    denoise = gaussian_denoiser(schedule)
    x = _initial_noise(4)
    sampler = samplers.DDIM(eta=1.0)
    a = _np(sampler.sample(denoise, x, schedule, 5, seed=7))
    b = _np(sampler.sample(denoise, x, schedule, 5, seed=7))
    c = _np(sampler.sample(denoise, x, schedule, 5, seed=8))
    deterministic = _np(samplers.DDIM().sample(denoise, x, schedule, 5))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3
    assert np.abs(a - deterministic).mean() > 1e-3
    generator = keras.random.SeedGenerator(7)
    d = _np(sampler.sample(denoise, x, schedule, 5, seed=generator))
    e = _np(sampler.sample(denoise, x, schedule, 5, seed=generator))
    assert np.abs(d - e).mean() > 1e-3


@pytest.mark.parametrize("steps", [0, -3])
def test_ddim_bad_steps(steps):
    schedule = schedules.CosineSchedule()
    with pytest.raises(ValueError, match="steps"):
        samplers.DDIM().sample(
            gaussian_denoiser(schedule), _initial_noise(2), schedule, steps
        )


def test_ddim_non_integer_steps():
    schedule = schedules.CosineSchedule()
    with pytest.raises(ValueError, match="steps"):
        samplers.DDIM().sample(
            gaussian_denoiser(schedule), _initial_noise(2), schedule, 2.5
        )


@pytest.mark.parametrize("eta,error", [(-0.1, ValueError), ("a", TypeError)])
def test_ddim_bad_eta(eta, error):
    with pytest.raises(error, match="eta"):
        samplers.DDIM(eta=eta)


def test_get_and_serialize():
    assert isinstance(samplers.get("ddim"), samplers.DDIM)
    assert samplers.get("DDIM").eta == 0.0
    assert isinstance(samplers.get(None), samplers.DDIM)
    sampler = samplers.DDIM(eta=0.5)
    assert samplers.get(sampler) is sampler
    config = json.loads(json.dumps(samplers.serialize(sampler)))
    restored = samplers.get(config)
    assert isinstance(restored, samplers.DDIM) and restored.eta == 0.5
    generic = keras.saving.deserialize_keras_object(config)
    assert isinstance(generic, samplers.DDIM) and generic.eta == 0.5
    plain = samplers.get({"class_name": "DDIM", "config": {"eta": 1.0}})
    assert plain.eta == 1.0
    with pytest.raises(ValueError, match="ddim"):
        samplers.get("euler-nonexistent")
    with pytest.raises(ValueError, match="ddim"):
        samplers.get(3)
