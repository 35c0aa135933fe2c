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
    out = _np(samplers.DDIM().sample(gaussian_denoiser(schedule), x, schedule, 1))
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


# --------------------------------------------------------------------------
# DDPM, Euler and Heun, and DDIM on every schedule, with the ideal
# predictions for Gaussian data x0 ~ N(MU, STD^2 I): for x_t = a x0 + b eps,
# x_t ~ N(a MU, V) with V = a^2 STD^2 + b^2, and
#   E[eps | x_t] = b (x_t - a MU) / V,
#   E[x0 | x_t] = MU + a STD^2 (x_t - a MU) / V.

T_DEFAULT = 1000
CLEAN_RATES = (1e-4, 0.9999)
SCHEDULES = {
    "cosine": lambda: schedules.CosineSchedule(*CLEAN_RATES),
    "linear_beta": schedules.LinearBeta,
    "iddpm_cosine": schedules.IDDPMCosine,
    "linear_interpolation": schedules.LinearInterpolation,
}


def ideal_denoiser(schedule, record=None):
    """(E[eps | x_t], E[x0 | x_t]) in keras.ops (no division by a)."""

    def denoise(x_t, t):
        if record is not None:
            record.append((_np(x_t), _np(t)))
        signal, noise = schedule(t)
        shape = (-1,) + (1,) * (len(x_t.shape) - 1)
        a = ops.reshape(signal, shape)
        b = ops.reshape(noise, shape)
        scaled = (x_t - a * MU) / (a**2 * STD**2 + b**2)
        return b * scaled, MU + a * STD**2 * scaled

    return denoise


def ideal_velocity(record=None):
    """E[eps - x0 | x_t] on the path x_t = (1 - t) x0 + t eps."""

    def velocity(x_t, t):
        if record is not None:
            record.append((_np(x_t), _np(t)))
        shape = (-1,) + (1,) * (len(x_t.shape) - 1)
        t = ops.reshape(t, shape)
        a, b = 1.0 - t, t
        scaled = (x_t - a * MU) / (a**2 * STD**2 + b**2)
        return b * scaled - (MU + a * STD**2 * scaled)

    return velocity


def np_alpha_bar(name, num_steps=T_DEFAULT):
    """alpha_bar_0..T of the papers' discrete schedules, in float64."""
    if name == "linear_beta":
        betas = np.linspace(1e-4, 0.02, num_steps)
    else:  # improved DDPM cosine, s = 0.008, betas clipped at 0.999
        t = np.arange(num_steps + 1) / num_steps
        f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.minimum(1.0 - f[1:] / f[:-1], 0.999)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def np_visited_rates(name, steps):
    """(a, b) at the steps + 1 times a sampler visits, t = 1 down to 0."""
    t = np.arange(steps, -1, -1) / steps
    if name == "cosine":
        return np_cosine(t, *CLEAN_RATES)
    if name == "linear_interpolation":
        return 1.0 - t, t
    alpha_bar = np_alpha_bar(name)[np.floor(t * T_DEFAULT + 0.5).astype(int)]
    return np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)


def np_sampler_moments(method, a, b):
    """Exact mean and variance of a sampler's output for Gaussian data.

    With the ideal predictions every step is affine in x_t plus independent
    Gaussian noise, so from x_1 ~ N(0, 1) the iterate stays Gaussian. The
    DDPM step is written in Ho et al.'s epsilon form for variance-preserving
    schedules and in the general Gaussian-path form (Kingma et al., 2021)
    otherwise; DDIM's sigma is eta times the posterior standard deviation.
    """
    vp = np.allclose(a**2 + b**2, 1.0)
    mean, var = 0.0, 1.0
    steps = len(a) - 1
    for k in range(steps):
        a_t, b_t, a_s, b_s = a[k], b[k], a[k + 1], b[k + 1]
        v = a_t**2 * STD**2 + b_t**2
        g_data, g_noise = a_t * STD**2 / v, b_t / v
        if k == steps - 1:
            return MU + g_data * (mean - a_t * MU), g_data**2 * var
        # pred_noise = g_noise * (x - a_t MU); pred_data = MU + g_data * (...)
        step_signal = a_t / a_s
        step_var = b_t**2 - step_signal**2 * b_s**2
        posterior_var = step_var * b_s**2 / b_t**2
        if method.startswith("ddim"):
            eta = float(method[4:])
            sigma2 = min(eta**2 * posterior_var, b_s**2)
            c = np.sqrt(b_s**2 - sigma2)
            gain = a_s * g_data + c * g_noise
            offset = a_s * (MU - g_data * a_t * MU) - c * g_noise * a_t * MU
        else:
            sigma2 = posterior_var if method == "ddpm_posterior" else step_var
            if vp:
                alpha, beta = a_t**2 / a_s**2, step_var
                # mean = (x - beta / sqrt(1 - abar_t) * eps) / sqrt(alpha)
                gain = (1.0 - beta / b_t * g_noise) / np.sqrt(alpha)
                offset = beta / b_t * g_noise * a_t * MU / np.sqrt(alpha)
            else:
                c_x, c_data = (
                    step_signal * b_s**2 / b_t**2,
                    a_s * step_var / b_t**2,
                )
                gain = c_x + c_data * g_data
                offset = c_data * (MU - g_data * a_t * MU)
        mean, var = gain * mean + offset, gain**2 * var + sigma2


def make_sampler(method):
    if method.startswith("ddim"):
        return samplers.DDIM(eta=float(method[4:]))
    return samplers.DDPM(variance=method.split("_")[1])


N_SAMPLES = 20000 * 4
SE_MEAN = STD / np.sqrt(N_SAMPLES)  # ~0.0018
SE_STD = STD / np.sqrt(2 * N_SAMPLES)  # ~0.0013


@pytest.mark.parametrize(
    "method,name,steps",
    [
        ("ddim0", "linear_beta", 150),
        ("ddim0", "iddpm_cosine", 100),
        ("ddim0", "linear_interpolation", 100),
        ("ddim1", "linear_beta", 400),
        ("ddim1", "iddpm_cosine", 200),
        ("ddim1", "linear_interpolation", 200),
        ("ddpm_posterior", "linear_beta", 1000),  # exactly Ho et al.'s DDPM
        ("ddpm_posterior", "iddpm_cosine", 200),
        ("ddpm_posterior", "cosine", 200),
        ("ddpm_beta", "linear_beta", 100),
        ("ddpm_beta", "iddpm_cosine", 100),
        ("ddpm_beta", "cosine", 100),
        ("ddpm_beta", "linear_interpolation", 100),
    ],
)
def test_samplers_recover_gaussian_data(method, name, steps):
    schedule = SCHEDULES[name]()
    samples = _np(
        make_sampler(method).sample(
            ideal_denoiser(schedule),
            keras.random.normal((N_SAMPLES // 4, 4), seed=3),
            schedule,
            steps,
            seed=4,
        )
    )
    # 1. The exact output moments of the discretized sampler (numpy, float64)
    #    lie within 0.01 of the data's: the step counts are chosen so that
    #    the discretization bias (at most 0.0098 on the std, largest for DDPM
    #    with the posterior variance, which misses the Var[x0 | x_t] part of
    #    the true reverse variance at every step) is below 2% of STD.
    mean, var = np_sampler_moments(method, *np_visited_rates(name, steps))
    assert abs(mean - MU) < 0.01 and abs(np.sqrt(var) - STD) < 0.01
    # 2. The samples have those exact moments, within 5 standard errors
    #    (0.009 on the mean, 0.006 on the std). Swapping the DDPM variances
    #    or dropping DDIM's noise moves the std by >= 0.005 to 0.02.
    assert abs(samples.mean() - mean) < 5 * SE_MEAN
    assert abs(samples.std() - np.sqrt(var)) < 5 * SE_STD
    # 3. Hence the data is reproduced: bias allowance 0.01 plus 5 SE.
    assert abs(samples.mean() - MU) < 0.01 + 5 * SE_MEAN
    assert abs(samples.std() - STD) < 0.01 + 5 * SE_STD


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("steps", [20, 7])
def test_ddpm_is_hos_reverse_process(variance, steps):
    # Step by step: x_s - mu(x_t) must be N(0, sigma^2) noise, with Ho et
    # al.'s mean mu = (x_t - beta / sqrt(1 - abar_t) * eps) / sqrt(alpha)
    # (epsilon form, unlike the sampler's data form) and sigma^2 = beta_tilde
    # or beta; alpha = abar_t / abar_s. With steps == T these are the betas of
    # the schedule; with 7 steps the visited steps are round(k * 20 / 7).
    schedule = schedules.LinearBeta(num_steps=20, beta_start=1e-3, beta_end=0.2)
    alpha_bar = np.concatenate([[1.0], np.cumprod(1.0 - np.linspace(1e-3, 0.2, 20))])
    expected_indices = (
        list(range(20, 0, -1)) if steps == 20 else [20, 17, 14, 11, 9, 6, 3]
    )
    record = []
    out = _np(
        samplers.DDPM(variance).sample(
            ideal_denoiser(schedule, record),
            keras.random.normal((4000, 4), seed=0),
            schedule,
            steps,
            seed=1,
        )
    )
    assert len(record) == steps
    times = np.array([t for _, t in record])
    np.testing.assert_allclose(
        times,
        np.repeat(np.array(expected_indices)[:, None] / 20, 4000, 1),
        atol=1e-7,
    )
    pooled = []
    for k in range(steps):
        x_t = record[k][0].astype("float64")
        i = expected_indices[k]
        a_t, b_t = np.sqrt(alpha_bar[i]), np.sqrt(1 - alpha_bar[i])
        eps = b_t * (x_t - a_t * MU) / (a_t**2 * STD**2 + b_t**2)
        if k == steps - 1:
            # Noiseless last step: Ho's mean to the clean step 0.
            alpha = alpha_bar[i]
            mean = (x_t - (1 - alpha) / b_t * eps) / np.sqrt(alpha)
            np.testing.assert_allclose(out, mean, atol=2e-5, rtol=1e-5)
            break
        s = expected_indices[k + 1]
        alpha = alpha_bar[i] / alpha_bar[s]
        beta = 1.0 - alpha
        mean = (x_t - beta / b_t * eps) / np.sqrt(alpha)
        sigma2 = beta * (1 - alpha_bar[s]) / (1 - alpha_bar[i])
        if variance == "beta":
            sigma2 = beta
        z = (record[k + 1][0] - mean) / np.sqrt(sigma2)
        # 16000 values per step: 5 standard errors.
        assert abs(z.mean()) < 5 / np.sqrt(z.size), (k, z.mean())
        assert abs(z.std() - 1) < 5 / np.sqrt(2 * z.size), (k, z.std())
        pooled.append(z)
    pooled = np.concatenate(pooled)
    assert abs(pooled.std() - 1) < 5 / np.sqrt(2 * pooled.size)


def test_samplers_visit_the_discrete_grid():
    schedule = schedules.LinearBeta(num_steps=10, beta_start=0.01, beta_end=0.3)
    x = np.zeros((3, 2), "float32")
    for sampler in [samplers.DDIM(), samplers.DDIM(eta=1.0), samplers.DDPM()]:
        for steps, indices in [
            (10, list(range(10, 0, -1))),
            (4, [10, 8, 5, 3]),  # round(k * 10 / 4), halves up
            (1, [10]),
        ]:
            record = []
            sampler.sample(ideal_denoiser(schedule, record), x, schedule, steps, seed=0)
            visited = [t for _, t in record]
            np.testing.assert_allclose(
                visited,
                np.array(indices)[:, None] / 10 * np.ones((1, 3)),
                atol=1e-7,
            )
        with pytest.raises(ValueError, match="steps"):
            sampler.sample(ideal_denoiser(schedule), x, schedule, 11)


def test_ddim_eta0_on_discrete_schedule_matches_numpy():
    schedule = schedules.IDDPMCosine(num_steps=12)
    t = np.arange(13) / 12
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    alpha_bar = np.concatenate(
        [[1.0], np.cumprod(1 - np.minimum(1 - f[1:] / f[:-1], 0.999))]
    )
    x0 = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    out = _np(samplers.DDIM().sample(ideal_denoiser(schedule), x0, schedule, 12))
    x = x0.astype("float64")
    for i in range(12, 0, -1):
        a, b = np.sqrt(alpha_bar[i]), np.sqrt(1 - alpha_bar[i])
        scaled = (x - a * MU) / (a**2 * STD**2 + b**2)
        eps, data = b * scaled, MU + a * STD**2 * scaled
        x = np.sqrt(alpha_bar[i - 1]) * data + np.sqrt(1 - alpha_bar[i - 1]) * eps
    # The last update lands on the clean step 0: x == pred_data.
    np.testing.assert_allclose(out, x, atol=1e-5, rtol=1e-5)


def test_ddim_eta0_on_linear_path_is_euler():
    schedule = schedules.LinearInterpolation()
    x = keras.random.normal((6, 2, 2, 1), seed=5)
    ddim_record, euler_record = [], []
    ddim_out = _np(
        samplers.DDIM().sample(ideal_denoiser(schedule, ddim_record), x, schedule, 9)
    )
    euler_out = _np(
        samplers.Euler().sample(ideal_velocity(euler_record), x, schedule, 9)
    )
    assert len(ddim_record) == len(euler_record) == 9
    for (x_ddim, t_ddim), (x_euler, t_euler) in zip(ddim_record, euler_record):
        np.testing.assert_allclose(t_ddim, t_euler, atol=1e-7)
        np.testing.assert_allclose(x_ddim, x_euler, atol=2e-6)
    np.testing.assert_allclose(ddim_out, euler_out, atol=2e-6)


def np_flow(x, steps, method):
    """Euler / Heun on the ideal velocity, in float64."""
    t = np.arange(steps, -1, -1) / steps

    def v(x, t):
        a, b = 1.0 - t, t
        scaled = (x - a * MU) / (a**2 * STD**2 + b**2)
        return b * scaled - (MU + a * STD**2 * scaled)

    for k in range(steps):
        h = t[k + 1] - t[k]
        v1 = v(x, t[k])
        x_pred = x + h * v1
        if method == "euler" or (method == "heun_euler" and k == steps - 1):
            x = x_pred
        else:
            x = x + h / 2 * (v1 + v(x_pred, t[k + 1]))
    return x


FLOW_SAMPLERS = {
    "euler": samplers.Euler,
    "heun_euler": samplers.Heun,
    "heun_heun": lambda: samplers.Heun(final_step="heun"),
}


def test_euler_and_heun_against_the_exact_transport_map():
    # For Gaussian data the probability-flow ODE of the linear path is
    # affine: x_t = a MU + sqrt(a^2 STD^2 + b^2) x_1 solves
    # dx/dt = E[eps - x0 | x_t] (differentiate both sides), so the exact map
    # from noise to data is x_0 = MU + STD * x_1.
    schedule = schedules.LinearInterpolation()
    z = np.linspace(-3.0, 3.0, 13, dtype="float32").reshape(13, 1)
    exact = MU + STD * z.astype("float64")
    errors = {}
    for method, make in FLOW_SAMPLERS.items():
        for steps in (10, 20, 40):
            out = _np(make().sample(ideal_velocity(), z, schedule, steps))
            # The update itself is the textbook one...
            np.testing.assert_allclose(
                out, np_flow(z.astype("float64"), steps, method), atol=2e-5
            )
            errors[method, steps] = np.abs(out - exact).max()
    # ...Heun is far more accurate than Euler at few steps (0.028 and 0.005
    # against 0.21 at 10 steps)...
    assert errors["heun_euler", 10] < 0.2 * errors["euler", 10]
    assert errors["heun_heun", 10] < 0.05 * errors["euler", 10]
    assert errors["heun_heun", 10] < errors["heun_euler", 10]
    # ...and the orders are 1 and 2: halving the step halves Euler's error
    # (ratio ~1.97) and quarters Heun's (~4.2 and ~3.7 from 20 to 40 steps).
    assert 1.8 < errors["euler", 20] / errors["euler", 40] < 2.2
    assert errors["heun_euler", 20] / errors["heun_euler", 40] > 3.3
    assert errors["heun_heun", 20] / errors["heun_heun", 40] > 3.3


@pytest.mark.parametrize("method,steps", [("euler", 200), ("heun_euler", 20)])
def test_flow_samplers_recover_gaussian_data(method, steps):
    # Deterministic: the output is (up to the discretization error, < 0.003
    # here, see the test above) MU + STD * x_1; 5 standard errors of the
    # sample statistics on top.
    samples = _np(
        FLOW_SAMPLERS[method]().sample(
            ideal_velocity(),
            keras.random.normal((N_SAMPLES // 4, 4), seed=3),
            schedules.LinearInterpolation(),
            steps,
        )
    )
    assert abs(samples.mean() - MU) < 0.003 + 5 * SE_MEAN
    assert abs(samples.std() - STD) < 0.003 + 5 * SE_STD


def test_flow_samplers_evaluation_times():
    x = np.zeros((2, 3), "float32")
    for sampler, expected in [
        (samplers.Euler(), [1.0, 0.75, 0.5, 0.25]),
        (samplers.Heun(), [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]),
        (
            samplers.Heun(final_step="heun"),
            [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0],
        ),
    ]:
        record = []
        sampler.sample(ideal_velocity(record), x, None, 4)
        np.testing.assert_allclose(
            [t for _, t in record],
            np.array(expected)[:, None] * np.ones((1, 2)),
        )
    # A single Heun step with the default Euler final step is an Euler step.
    z = np.array([[0.7, -1.2]], "float32")
    schedule = schedules.LinearInterpolation()
    np.testing.assert_allclose(
        _np(samplers.Heun().sample(ideal_velocity(), z, schedule, 1)),
        _np(samplers.Euler().sample(ideal_velocity(), z, schedule, 1)),
    )


@pytest.mark.parametrize(
    "sampler", [samplers.DDPM(), samplers.DDPM("beta"), samplers.DDIM(eta=0.5)]
)
def test_stochastic_samplers_seeding(sampler):
    schedule = schedules.LinearBeta(num_steps=50)
    denoise = ideal_denoiser(schedule)
    x = _initial_noise(4)
    a = _np(sampler.sample(denoise, x, schedule, 10, seed=7))
    b = _np(sampler.sample(denoise, x, schedule, 10, seed=7))
    c = _np(sampler.sample(denoise, x, schedule, 10, seed=8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3
    generator = keras.random.SeedGenerator(7)
    d = _np(sampler.sample(denoise, x, schedule, 10, seed=generator))
    e = _np(sampler.sample(denoise, x, schedule, 10, seed=generator))
    assert np.abs(d - e).mean() > 1e-3


def test_sampler_kinds_aliases_and_round_trip():
    assert samplers.DDIM.kind == samplers.DDPM.kind == "denoise"
    assert samplers.Euler.kind == samplers.Heun.kind == "velocity"
    for name, cls in [
        ("ddim", samplers.DDIM),
        ("ddpm", samplers.DDPM),
        ("euler", samplers.Euler),
        ("heun", samplers.Heun),
    ]:
        assert type(samplers.get(name)) is cls
        assert type(samplers.get(name.upper())) is cls
    assert samplers.get("ddpm").variance == "posterior"
    assert samplers.get("heun").final_step == "euler"
    for sampler in [
        samplers.DDPM(variance="beta"),
        samplers.Euler(),
        samplers.Heun(final_step="heun"),
    ]:
        config = json.loads(json.dumps(samplers.serialize(sampler)))
        restored = samplers.get(config)
        assert type(restored) is type(sampler)
        assert restored.get_config() == sampler.get_config()
        generic = keras.saving.deserialize_keras_object(config)
        assert generic.get_config() == sampler.get_config()
    assert repr(samplers.DDPM("beta")) == "DDPM(variance='beta')"
    assert repr(samplers.Heun()) == "Heun(final_step='euler')"
    assert repr(samplers.Euler()) == "Euler()"


def test_new_samplers_bad_arguments():
    with pytest.raises(ValueError, match="variance"):
        samplers.DDPM(variance="learned")
    with pytest.raises(ValueError, match="final_step"):
        samplers.Heun(final_step="rk4")
    schedule = schedules.LinearInterpolation()
    x = _initial_noise(2)
    for sampler in [samplers.DDPM(), samplers.Euler(), samplers.Heun()]:
        fn = (
            ideal_velocity()
            if sampler.kind == "velocity"
            else (ideal_denoiser(schedule))
        )
        for steps in (0, 2.5, True):
            with pytest.raises(ValueError, match="steps"):
                sampler.sample(fn, x, schedule, steps)
        with pytest.raises(TypeError, match="callable"):
            sampler.sample("not a function", x, schedule, 3)
        with pytest.raises(ValueError, match="batch"):
            sampler.sample(fn, np.float32(1.0), schedule, 3)


@pytest.mark.parametrize(
    "sampler,name",
    [
        (samplers.DDIM(), "iddpm_cosine"),
        (samplers.DDIM(), "linear_interpolation"),
        (samplers.Heun(), "linear_interpolation"),
    ],
)
def test_deterministic_samplers_compile(sampler, name):
    # The whole sampling loop traces (XLA on JAX and TensorFlow) and gives
    # the eager result.
    from keras_immiscible.backend import compiled

    schedule = SCHEDULES[name]()
    fn = ideal_velocity() if sampler.kind == "velocity" else (ideal_denoiser(schedule))
    x = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
    run = compiled(
        lambda x: sampler.sample(fn, x, schedule, 8),
        ("test_deterministic_samplers_compile", repr(sampler), name),
    )
    np.testing.assert_allclose(
        _np(run(x)), _np(sampler.sample(fn, x, schedule, 8)), atol=1e-5
    )


def test_stochastic_property_and_is_stochastic():
    consistency = samplers.ConsistencySampler
    cases = [
        (samplers.DDIM(), False),
        (samplers.DDIM(eta=0.5), True),
        (samplers.DDIM(eta=1.0), True),
        (samplers.DDPM(), True),
        (samplers.DDPM(variance="beta"), True),
        (samplers.Euler(), False),
        (samplers.Heun(), False),
        (samplers.Heun(final_step="heun"), False),
        (consistency(), True),
        (consistency((80.0, 0.821)), True),
        (consistency((80.0,)), False),
    ]
    for sampler, stochastic in cases:
        assert sampler.stochastic is stochastic, sampler
        # One step only predicts: deterministic whatever the sampler.
        assert sampler.is_stochastic(1) is False, sampler
        assert sampler.is_stochastic(2) is stochastic, sampler
        assert sampler.is_stochastic(50) is stochastic, sampler
        with pytest.raises(AttributeError):
            sampler.stochastic = not stochastic
    # ConsistencySampler keeps its repr and round trip on SamplerBase.
    sampler = consistency((80.0, 0.821))
    assert repr(sampler) == "ConsistencySampler(sigmas=[80.0, 0.821])"
    restored = samplers.get(json.loads(json.dumps(samplers.serialize(sampler))))
    assert type(restored) is consistency and restored.sigmas == [80.0, 0.821]
    assert restored.is_stochastic(2)


def test_registered_names_and_base_class_home():
    """Saved models name their samplers by these: they must not change."""
    from keras_immiscible.samplers import sampler as sampler_module

    for cls in (
        samplers.DDIM,
        samplers.DDPM,
        samplers.Euler,
        samplers.Heun,
        samplers.ConsistencySampler,
    ):
        assert keras.saving.get_registered_name(cls) == (
            f"keras_immiscible>{cls.__name__}"
        )
        assert issubclass(cls, sampler_module.SamplerBase)
    assert samplers.SamplerBase is sampler_module.SamplerBase
    with pytest.raises(ValueError) as info:
        samplers.DDIM().sample(lambda x, t: (x, x), np.zeros((1, 2)), None, 0)
    assert str(info.value) == "`steps` must be a positive int, got 0."
    with pytest.raises(ValueError) as info:
        samplers.DDIM(eta=-0.5)
    assert str(info.value) == "`eta` must be a number >= 0, got -0.5."
