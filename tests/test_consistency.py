"""ImmiscibleConsistency (iCT): schedule formulas, loss, training, sampling."""

import math
import os

import keras
import numpy as np
import pytest

import keras_immiscible as ki
from keras_immiscible.assignment import NoiseAssigner
from keras_immiscible.samplers import ConsistencySampler
from keras_immiscible.schedules import consistency as cm

SHAPE = (8, 8, 1)
S_MIN, S_MAX, RHO = 0.002, 80.0, 7.0


def _np(x):
    return keras.ops.convert_to_numpy(x)


def np_karras(num_levels):
    """The paper's grid, written out in float64 (i = 1..N in the paper)."""
    i = np.arange(1, num_levels + 1, dtype="float64")
    low, high = S_MIN ** (1 / RHO), S_MAX ** (1 / RHO)
    return (low + (i - 1) / (num_levels - 1) * (high - low)) ** RHO


def tiny_unet():
    return ki.layers.UNet(
        image_shape=SHAPE, widths=(8,), block_depth=1, embedding_dims=8
    )


def half_network():
    """F(x, c) = x / 2, whatever the noise level."""
    noisy = keras.Input(SHAPE)
    level = keras.Input((1, 1, 1))
    out = keras.layers.Rescaling(0.5)(noisy)
    out = keras.layers.Add()([out, keras.layers.Rescaling(0.0)(level)])
    return keras.Model([noisy, level], out)


class FixedNoise(NoiseAssigner):
    def __init__(self, noise):
        self.noise = noise

    def __call__(self, data, seed=None, return_gain=False):
        noise = keras.ops.convert_to_tensor(self.noise)
        return (noise, keras.ops.zeros(())) if return_gain else noise


class FixedIndex(ki.ImmiscibleConsistency):
    """Test hook: the training pair index of every sample is forced."""

    forced_index = None

    def sample_index(self, batch_size, num_levels):
        return keras.ops.convert_to_tensor(self.forced_index, "int32")


@pytest.fixture(scope="module")
def digits():
    return ki.data.load_digits()


def make_model(assignment=None, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("total_training_steps", 400_000)
    model = ki.ImmiscibleConsistency(
        tiny_unet(), assignment=assignment, seed=seed, **kwargs
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


# ------------------------------------------------------- schedule functions


@pytest.mark.parametrize("num_levels", [2, 11, 1281])
def test_karras_grid_matches_the_formula(num_levels):
    sigmas = _np(cm.karras_sigmas(num_levels))
    np.testing.assert_allclose(sigmas, np_karras(num_levels), rtol=2e-6)
    assert sigmas[0] == np.float32(S_MIN) and sigmas[-1] == np.float32(S_MAX)
    assert np.all(np.diff(sigmas) > 0)
    # The tensor form (N a tensor, indices past N - 1 clamped) agrees.
    index = np.arange(num_levels + 3)
    padded = _np(cm.karras_sigma(index, np.int32(num_levels)))
    np.testing.assert_array_equal(padded[:num_levels], sigmas)
    assert np.all(padded[num_levels:] == np.float32(S_MAX))


def test_karras_grid_hand_values():
    # N = 3: the midpoint is ((0.002^(1/7) + 80^(1/7)) / 2)^7.
    mid = ((0.002 ** (1 / 7) + 80 ** (1 / 7)) / 2) ** 7
    # By hand: 0.002^(1/7) = 0.41156, 80^(1/7) = 1.87022, 1.14089^7 = 2.5161.
    assert mid == pytest.approx(2.5161, abs=2e-3)
    np.testing.assert_allclose(_np(cm.karras_sigmas(3)), [0.002, mid, 80.0], rtol=2e-6)


def test_curriculum_matches_the_paper():
    # K' = floor(K / (log2(floor(1280 / 10)) + 1)) = floor(K / 8).
    assert cm.curriculum_interval(400_000) == 50_000
    assert cm.curriculum_interval(16) == 2
    assert cm.curriculum_interval(100) == 12
    assert cm.curriculum_interval(3) == 1  # at least one step per stage
    assert cm.curriculum_interval(1000, 10, 40) == 333  # floor(1000 / 3)
    cases = {
        0: 11,
        49_999: 11,
        50_000: 21,
        100_000: 41,
        150_000: 81,
        300_000: 641,
        349_999: 641,
        350_000: 1281,  # min(10 * 128, 1280) + 1
        399_999: 1281,
        400_000: 1281,
        10**9: 1281,  # capped at s1 + 1
    }
    steps = np.array(list(cases), "int32")
    levels = _np(cm.curriculum_num_levels(steps, 400_000))
    np.testing.assert_array_equal(levels, list(cases.values()))
    for step, expected in cases.items():
        assert int(_np(cm.curriculum_num_levels(step, 400_000))) == expected
    # s1 not a power-of-two multiple of s0: the cap cuts the last doubling.
    assert int(_np(cm.curriculum_num_levels(3 * 333, 1000, 10, 40))) == 41
    assert int(_np(cm.curriculum_num_levels(2 * 333, 1000, 10, 40))) == 41
    assert int(_np(cm.curriculum_num_levels(332, 1000, 10, 40))) == 11


@pytest.mark.parametrize("num_levels", [11, 41, 1281])
def test_index_probabilities_match_erf(num_levels):
    sigmas = np_karras(num_levels)
    cdf = [math.erf((math.log(s) + 1.1) / (math.sqrt(2.0) * 2.0)) for s in sigmas]
    expected = np.diff(cdf)
    expected /= expected.sum()
    probs = _np(cm.index_probabilities(num_levels))
    assert probs.shape == (num_levels - 1,)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, expected, rtol=2e-3, atol=1e-7)
    # Fixed-size form with a tensor N: zeros past the N - 1 pairs.
    padded = _np(cm.index_probabilities(np.int32(num_levels), max_levels=1281))
    assert padded.shape == (1280,)
    np.testing.assert_allclose(padded[: num_levels - 1], probs, rtol=1e-5)
    assert np.all(padded[num_levels - 1 :] == 0.0)


def test_loss_weight_huber_constant_and_distance():
    sigmas = np_karras(11)
    weights = _np(cm.loss_weight(sigmas[:-1], sigmas[1:]))
    np.testing.assert_allclose(weights, 1.0 / np.diff(sigmas), rtol=1e-5)
    np.testing.assert_allclose(weights[0], 1 / (0.0167208 - 0.002), rtol=1e-4)
    assert cm.pseudo_huber_c(64) == pytest.approx(0.00432)  # 0.00054 * 8
    assert cm.pseudo_huber_c(3072) == pytest.approx(0.029929, abs=1e-6)
    with pytest.raises(ValueError, match="dim"):
        cm.pseudo_huber_c(0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 3, 4, 4, 2)).astype("float32")
    expected = np.sqrt(((x - y) ** 2).sum(axis=(1, 2, 3)) + 0.03**2) - 0.03
    np.testing.assert_allclose(_np(cm.pseudo_huber(x, y, 0.03)), expected, rtol=1e-5)


def test_edm_scalings_and_boundary_condition():
    sigmas = np.array([0.002, 0.1, 0.5, 3.0, 80.0], "float32")
    c_skip, c_out, c_in = (_np(c) for c in cm.edm_scalings(sigmas))
    s = sigmas.astype("float64")
    s_min = float(np.float32(S_MIN))  # the float32 boundary, as in the grid
    np.testing.assert_allclose(c_skip, 0.25 / ((s - s_min) ** 2 + 0.25), rtol=1e-5)
    np.testing.assert_allclose(
        c_out, 0.5 * (s - s_min) / np.sqrt(0.25 + s**2), rtol=1e-5
    )
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + 0.25), rtol=1e-5)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    # f(x, sigma_min) == x exactly, with a network whose output is not 0,
    # and at the grid's first level.
    model = ki.ImmiscibleConsistency(half_network(), assignment=None)
    x = np.random.default_rng(1).standard_normal((3,) + SHAPE)
    x = x.astype("float32")
    level = cm.karras_sigma(np.zeros(3, "int32"), 21)
    out = _np(model.consistency_function(x, level))
    np.testing.assert_array_equal(out, x)
    # Elsewhere the network is used: c_skip x + c_out * (c_in x) / 2.
    out = _np(model.consistency_function(x, np.full(3, 0.5, "float32")))
    c_skip, c_out, c_in = (
        0.25 / (0.498**2 + 0.25),
        0.25 * 0.996 / np.sqrt(0.5),
        1 / np.sqrt(0.5),
    )
    np.testing.assert_allclose(out, (c_skip + c_out * c_in / 2) * x, rtol=1e-5)


def test_noise_conditioning_is_resolved_by_the_embedding():
    cond = _np(cm.noise_conditioning(np.array([0.002, 80.0], "float32")))
    np.testing.assert_allclose(cond, [0.1, 0.9], atol=1e-6)
    mid = math.sqrt(0.002 * 80.0)  # geometric midpoint -> 0.5
    np.testing.assert_allclose(_np(cm.noise_conditioning(mid)), 0.5, atol=1e-6)
    # With the tests' 8-dim embedding, the two ends and the two lowest
    # levels of the finest grid get different embeddings.
    embedding = ki.layers.SinusoidalEmbedding(8)
    finest = _np(cm.karras_sigmas(1281))[:2]
    levels = np.array([0.002, 80.0, *finest], "float32")
    features = _np(embedding(cm.noise_conditioning(levels)[:, None]))
    assert np.abs(features[0] - features[1]).max() > 0.5
    assert np.abs(features[2] - features[3]).max() > 0.1


# ------------------------------------------------------------------- loss


@pytest.mark.parametrize("loss_type", ["pseudo_huber", "mse"])
def test_loss_equals_a_hand_computation(digits, loss_type):
    images = digits[:4]
    noise = np.random.default_rng(2).standard_normal(images.shape)
    noise = noise.astype("float32")
    model = FixedIndex(
        half_network(),
        assignment=FixedNoise(noise),
        total_training_steps=16,
        loss_type=loss_type,
    )
    data = images.astype("float64") * 2 - 1
    z = noise.astype("float64")

    def f(x, s):
        s = s[:, None, None, None]
        c_skip = 0.25 / ((s - S_MIN) ** 2 + 0.25)
        c_out = 0.5 * (s - S_MIN) / np.sqrt(0.25 + s**2)
        c_in = 1 / np.sqrt(s**2 + 0.25)
        return c_skip * x + c_out * 0.5 * c_in * x

    # Step 0 (N = 11), then step 5 (K' = floor(16 / 8) = 2: N = 10 * 4 + 1).
    for step, num_levels, index in [(0, 11, [0, 3, 9, 5]), (5, 41, [0, 20, 39, 7])]:
        model.training_steps.assign(step)
        model.forced_index = index
        loss = float(_np(model.compute_loss(x=images)))
        sigmas = np_karras(num_levels)
        s, s_next = sigmas[index], sigmas[np.array(index) + 1]
        diff = f(data + s_next[:, None, None, None] * z, s_next) - f(
            data + s[:, None, None, None] * z, s
        )
        if loss_type == "pseudo_huber":
            c = 0.00054 * 8.0
            distance = np.sqrt((diff**2).sum(axis=(1, 2, 3)) + c**2) - c
        else:
            distance = (diff**2).mean(axis=(1, 2, 3))
        expected = np.mean(distance / (s_next - s))
        assert loss == pytest.approx(expected, rel=2e-4)
        # A training loss advances the curriculum counter by one.
        assert int(_np(model.training_steps)) == step + 1


def test_sampled_indices_follow_the_lognormal(digits):
    model = ki.ImmiscibleConsistency(half_network(), assignment=None, seed=4)
    for num_levels in (11, 41):
        index = _np(model.sample_index(20_000, np.int32(num_levels)))
        assert index.min() >= 0 and index.max() <= num_levels - 2
        counts = np.bincount(index, minlength=num_levels - 1)
        probs = _np(cm.index_probabilities(num_levels))
        # Within 5 binomial standard deviations (+ 1 count) per pair.
        tolerance = 5 * np.sqrt(20_000 * probs * (1 - probs)) + 1
        assert np.all(np.abs(counts - 20_000 * probs) <= tolerance)


def test_gradient_flows_through_the_student_only(digits):
    images = digits[:2]
    noise = np.random.default_rng(5).standard_normal(images.shape)
    scale = keras.Variable(np.float32(0.5))

    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * scale

    inputs = [keras.Input(SHAPE), keras.Input((1, 1, 1))]
    out = keras.layers.Add()(
        [Scale()(inputs[0]), keras.layers.Rescaling(0.0)(inputs[1])]
    )
    model = FixedIndex(
        keras.Model(inputs, out),
        assignment=FixedNoise(noise.astype("f4")),
        loss_type="mse",
    )
    model.forced_index = [2, 6]
    # Loss of w: mean(lambda * mean((a(w) x1 - stopgrad(b(w) x0))^2)); with
    # the target frozen, dL/dw = mean(lambda * mean(2 (f1 - f0) c_out1 c_in1
    # x1)), which is not the derivative of the symmetric (no stop-gradient)
    # loss. Check against a finite difference of the student alone.
    grad = _loss_grad(model, images, scale)
    sigmas = np_karras(11)
    s, s_next = sigmas[[2, 6]], sigmas[[3, 7]]
    data = images * 2.0 - 1.0

    def f(x, sig, w):
        sig = sig[:, None, None, None]
        c_skip = 0.25 / ((sig - S_MIN) ** 2 + 0.25)
        c_out = 0.5 * (sig - S_MIN) / np.sqrt(0.25 + sig**2)
        c_in = 1 / np.sqrt(sig**2 + 0.25)
        return c_skip * x + c_out * w * c_in * x

    x0 = data + s[:, None, None, None] * noise
    x1 = data + s_next[:, None, None, None] * noise
    target = f(x0, s, 0.5)

    def student_loss(w):
        dist = ((f(x1, s_next, w) - target) ** 2).mean(axis=(1, 2, 3))
        return np.mean(dist / (s_next - s))

    eps = 1e-4
    expected = (student_loss(0.5 + eps) - student_loss(0.5 - eps)) / (2 * eps)
    assert grad == pytest.approx(expected, rel=1e-3)


def _loss_grad(model, images, variable):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=images)
        return float(tape.gradient(loss, variable.value))
    if backend == "torch":
        loss = model.compute_loss(x=images)
        loss.backward()
        return float(variable.value.grad)
    import jax

    def loss_fn(value):
        with keras.StatelessScope(state_mapping=[(variable, value)]):
            return model.compute_loss(x=images, training=False)

    return float(jax.grad(loss_fn)(variable.value))


# --------------------------------------------------------------- training


def _fixed_loss(model, images):
    """The loss on fixed images with fixed noise and levels (the seed state
    is restored), without advancing the curriculum: a loss comparable
    before and after training."""
    state = _np(model.seed_generator.state)
    step = _np(model.training_steps)
    model.seed_generator.state.assign(np.array([7, 0], state.dtype))
    losses = [
        float(_np(model.compute_loss(x=images[i : i + 128], training=False)))
        for i in range(0, len(images), 128)
    ]
    model.seed_generator.state.assign(state)
    assert int(_np(model.training_steps)) == int(step)
    return float(np.mean(losses))


@pytest.mark.filterwarnings("ignore:This fit ends at training step")
@pytest.mark.parametrize("assignment", [None, "linear", "knn"])
def test_training_lowers_the_loss_and_advances_the_curriculum(digits, assignment):
    # K = 400,000 keeps N(k) = 11 during this run, so the loss measured
    # on a fixed batch with fixed noise and levels is one function of the
    # weights before and after training (with a moving curriculum the raw
    # training loss changes with N and is no such measure). 40 steps take
    # it to ~0.75x its initial value on every backend and assigner.
    model = make_model(assignment, seed=1)
    train = digits[:320]
    before = _fixed_loss(model, digits[-256:])
    history = model.fit(train, batch_size=32, epochs=3, verbose=0, shuffle=False)
    assert int(_np(model.training_steps)) == 30
    model.fit(train, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert int(_np(model.training_steps)) == 40  # counted across fits
    after = _fixed_loss(model, digits[-256:])
    assert after < 0.85 * before, (before, after)
    gains = history.history["assignment_gain"]
    if assignment is None:
        assert gains == [0.0] * 3
    else:
        assert all(g > 0.01 for g in gains), gains
    if assignment is None:  # (one compile of the test step is enough)
        # evaluate() does not advance the curriculum.
        model.evaluate(train[:64], batch_size=32, verbose=0)
        assert int(_np(model.training_steps)) == 40
    # One-step samples: finite, in range, not a constant image.
    raw = _np(
        model.sample(keras.random.normal((16,) + SHAPE, seed=0), 1, model.sampler, 1)
    )
    assert np.all(np.isfinite(raw)) and np.abs(raw).max() < 3.0
    samples = model.generate(16, steps=1, seed=0)
    assert samples.shape == (16,) + SHAPE and samples.dtype == np.float32
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    assert samples.std() > 0.01


def curriculum_warnings(record):
    return [w for w in record if "This fit ends" in str(w.message)]


def test_fit_warns_when_the_curriculum_is_paced_for_another_run(digits):
    import warnings

    model = make_model(None, total_training_steps=8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        # Ends at step 4, then 8: within 2x of K = 8, no warning.
        model.fit(digits[:64], batch_size=16, epochs=1, verbose=0)
        model.fit(digits[:64], batch_size=16, epochs=1, verbose=0)
        assert curriculum_warnings(record) == []
        # Ends at step 8 + 3 * 4 = 20 > 2 K: most of it at the final levels.
        model.fit(digits[:64], batch_size=16, epochs=3, verbose=0)
        found = curriculum_warnings(record)
        assert len(found) == 1
        assert "step 20" in str(found[0].message)
        assert "total_training_steps=20" in str(found[0].message)
        assert found[0].filename == __file__  # points at the user's fit
        # Once per model.
        model.fit(digits[:64], batch_size=16, epochs=3, verbose=0)
        assert len(curriculum_warnings(record)) == 1
    # The paper's default K on a 4-step run: warned, with the levels reached.
    short = make_model(None, total_training_steps=400_000)
    with pytest.warns(UserWarning, match=r"reaches 11 of 1281 noise levels"):
        short.fit(digits[:64], batch_size=16, epochs=1, verbose=0)


def _train_short(digits, seed):
    """A model with every constructor argument off its default, trained for
    13 steps in two `fit` calls on a fast curriculum."""
    model = make_model(
        "linear",
        seed=seed,
        total_training_steps=16,
        sigma_max=60.0,
        sigma_data=0.6,
        rho=6.0,
        initial_levels=8,
        final_levels=256,
        p_mean=-1.0,
        p_std=1.5,
        loss_type="pseudo_huber",
        huber_c=0.01,
        sampler=ConsistencySampler(sigmas=(60.0, 5.0, 0.5)),
    )
    # K' = floor(16 / (log2(256 / 8) + 1)) = 2, so
    # N(k) = min(8 * 2^floor(k / 2), 256) + 1 moves during the run.
    model.fit(digits[:96], batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert int(_np(model.training_steps)) == 3
    assert int(_np(model.num_levels())) == 17
    model.fit(digits[:160], batch_size=32, epochs=2, verbose=0, shuffle=False)
    assert int(_np(model.training_steps)) == 13
    assert int(_np(model.num_levels())) == 257  # 8 * 2^6 = 512, capped
    return model


@pytest.mark.filterwarnings("ignore:This fit ends at training step")
def test_same_seed_and_save_load_round_trip(digits, tmp_path):
    model = _train_short(digits, seed=2)
    samples = model.generate(4, seed=0)  # 3 steps: the sampler's sigmas
    # Same seed, same weights (the step counter included) and samples.
    again = _train_short(digits, seed=2)
    for w1, w2 in zip(model.weights, again.weights):
        np.testing.assert_array_equal(_np(w1), _np(w2))
    # (Same weights give the same samples: see the loaded model below.)
    assert not np.allclose(model.generate(4, seed=1), samples)
    # .keras round trip: every argument, the counter and the samples.
    path = os.path.join(tmp_path, "consistency.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ki.ImmiscibleConsistency)
    config, loaded_config = model.get_config(), loaded.get_config()
    for key in (
        "total_training_steps",
        "sigma_min",
        "sigma_max",
        "sigma_data",
        "rho",
        "initial_levels",
        "final_levels",
        "p_mean",
        "p_std",
        "loss_type",
        "huber_c",
        "sampler",
        "assignment",
        "seed",
    ):
        assert loaded_config[key] == config[key], key
    assert loaded.sigma_max == 60.0 and loaded.huber_c == 0.01
    assert loaded.sampler.sigmas == [60.0, 5.0, 0.5]
    assert int(_np(loaded.training_steps)) == 13
    np.testing.assert_array_equal(loaded.generate(4, seed=0), samples)
    np.testing.assert_array_equal(
        model.generate(4, steps=1, seed=0, sampler="consistency"),
        loaded.generate(4, steps=1, seed=0, sampler="consistency"),
    )


# --------------------------------------------------------------- sampling


def test_sampler_levels():
    sampler = ConsistencySampler()
    assert sampler.sigma_sequence(1, S_MIN, S_MAX) == [80.0]
    assert sampler.sigma_sequence(2, S_MIN, S_MAX) == [80.0, 0.821]
    # steps >= 3: the first `steps` levels of the (steps + 1)-level grid.
    np.testing.assert_allclose(
        sampler.sigma_sequence(4, S_MIN, S_MAX),
        np_karras(5)[::-1][:4],
        rtol=1e-12,
    )
    custom = ConsistencySampler(sigmas=(80.0, 10.0, 1.0))
    assert custom.sigma_sequence(3, S_MIN, S_MAX) == [80.0, 10.0, 1.0]
    with pytest.raises(ValueError, match="steps"):
        custom.sigma_sequence(2, S_MIN, S_MAX)
    with pytest.raises(ValueError, match="decreasing"):
        ConsistencySampler(sigmas=(1.0, 10.0))
    with pytest.raises(ValueError, match="> 0"):
        ConsistencySampler(sigmas=(1.0, -1.0))
    with pytest.raises(TypeError, match="`sigmas` must be a number > 0"):
        ConsistencySampler(sigmas=(1.0, "0.5"))
    with pytest.raises(TypeError, match="sequence"):
        ConsistencySampler(sigmas=80.0)
    # Serializes through `ki.samplers` like the other samplers.
    restored = ki.samplers.get(ki.samplers.serialize(custom))
    assert isinstance(restored, ConsistencySampler)
    assert restored.sigmas == [80.0, 10.0, 1.0]
    with pytest.raises(ValueError, match="sigma_max"):
        ConsistencySampler(sigmas=(100.0, 1.0)).sigma_sequence(2, S_MIN, S_MAX)


@pytest.mark.parametrize("sigmas", [(80.0,), (80.0, 0.821), (80.0, 5.0, 0.3)])
def test_multistep_sampler_on_gaussian_data(sigmas):
    # Data N(mu, s^2): the probability-flow ODE of x_sigma = x0 + sigma z is
    # affine and the exact consistency function is
    # f(x, sigma) = mu + (x - mu) sqrt(s^2 + sigma_min^2) / sqrt(s^2 + sigma^2).
    mu, s = 0.3, 0.4

    def ratio(sig):
        return math.sqrt(s**2 + S_MIN**2) / math.sqrt(s**2 + sig**2)

    def consistency_fn(x, sigma):
        return mu + (x - mu) * ratio(sigma)

    # Moments of the sampler's recursion, written out.
    mean, var = mu - mu * ratio(sigmas[0]), (sigmas[0] * ratio(sigmas[0])) ** 2
    for sig in sigmas[1:]:
        mean = mu + (mean - mu) * ratio(sig)
        var = ratio(sig) ** 2 * (var + sig**2 - S_MIN**2)
    noise = keras.random.normal((40_000, 1), seed=3)
    out = _np(
        ConsistencySampler(sigmas).sample(consistency_fn, noise, len(sigmas), seed=4)
    )
    assert out.mean() == pytest.approx(mean, abs=4 * math.sqrt(var / 40_000))
    assert out.var() == pytest.approx(var, rel=0.03)
    # One step already lands on the data variance (up to sigma_min);
    # more steps keep it there.
    assert var == pytest.approx(s**2, rel=0.01)


def test_generate_options():
    model = make_model(None)
    two = model.generate(3, steps=2, seed=1)
    np.testing.assert_array_equal(two, model.generate(3, seed=1, sigmas=(80.0, 0.821)))
    three = model.generate(3, seed=1, sigmas=(80.0, 2.0, 0.2))
    assert three.shape == (3,) + SHAPE and not np.allclose(two, three)
    with pytest.raises(ValueError, match="sampler"):
        model.generate(2, sampler="ddim")
    with pytest.raises(ValueError, match="steps"):
        model.generate(2, steps=2, sigmas=(80.0, 2.0, 0.2))


def test_bad_arguments():
    net = tiny_unet()
    with pytest.raises(ValueError, match="total_training_steps"):
        ki.ImmiscibleConsistency(net, total_training_steps=0)
    with pytest.raises(TypeError, match="total_training_steps"):
        ki.ImmiscibleConsistency(net, total_training_steps=1.5)
    with pytest.raises(ValueError, match="sigma_max"):
        ki.ImmiscibleConsistency(net, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="final_levels"):
        ki.ImmiscibleConsistency(net, initial_levels=20, final_levels=10)
    with pytest.raises(ValueError, match="p_std"):
        ki.ImmiscibleConsistency(net, p_std=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        ki.ImmiscibleConsistency(net, loss_type="lpips")
    with pytest.raises(ValueError, match="sampler"):
        ki.ImmiscibleConsistency(net, sampler="ddim")
    with pytest.raises(TypeError, match="network"):
        ki.ImmiscibleConsistency("unet")
