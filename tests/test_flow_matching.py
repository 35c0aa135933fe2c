"""ImmiscibleFlowMatching: velocity target, time sampling, training, saving."""

import os

import keras
import numpy as np
import pytest
import scipy.stats

import keras_immiscible as ki
from keras_immiscible.assignment import NoiseAssigner

SHAPE = (8, 8, 1)


def tiny_unet():
    return ki.layers.UNet(
        image_shape=SHAPE, widths=(8,), block_depth=1, embedding_dims=8
    )


@pytest.fixture(scope="module")
def digits():
    return ki.data.load_digits()


class FixedNoise(NoiseAssigner):
    def __init__(self, noise):
        self.noise = noise

    def __call__(self, data, seed=None, return_gain=False):
        noise = keras.ops.convert_to_tensor(self.noise)
        return (noise, keras.ops.zeros(())) if return_gain else noise


def half_network():
    """Outputs half its noisy input plus its time input: a known function."""
    noisy = keras.Input(SHAPE)
    level = keras.Input((1, 1, 1))
    out = keras.layers.Add()([keras.layers.Rescaling(0.5)(noisy), level])
    return keras.Model([noisy, level], out)


def test_loss_regresses_the_straight_path_velocity(digits):
    images = digits[:4]
    noise = np.random.default_rng(0).standard_normal(images.shape)
    noise = noise.astype("float32")
    model = ki.ImmiscibleFlowMatching(
        half_network(), assignment=FixedNoise(noise), seed=5
    )
    t = np.array([0.1, 0.4, 0.7, 0.95], "float32")
    model.sample_times = lambda batch_size: keras.ops.convert_to_tensor(t)
    loss = keras.ops.convert_to_numpy(model.compute_loss(x=images))
    data = images * 2.0 - 1.0
    tb = t[:, None, None, None]
    x_t = (1.0 - tb) * data + tb * noise
    # The network sees t itself as its noise level.
    expected = np.mean((0.5 * x_t + tb - (noise - data)) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_logit_normal_times_follow_their_distribution():
    model = ki.ImmiscibleFlowMatching(
        tiny_unet(),
        time_sampling="logit_normal",
        logit_mean=0.5,
        logit_std=0.8,
        seed=0,
    )
    t = keras.ops.convert_to_numpy(model.sample_times(4000))
    assert t.min() > 0.0 and t.max() < 1.0
    logits = np.log(t) - np.log1p(-t)
    result = scipy.stats.kstest(logits, "norm", args=(0.5, 0.8))
    assert result.pvalue > 1e-3, result
    uniform = ki.ImmiscibleFlowMatching(tiny_unet(), seed=0)
    t = keras.ops.convert_to_numpy(uniform.sample_times(4000))
    assert scipy.stats.kstest(t, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("assignment", [None, "linear", "knn"])
def test_training_lowers_the_loss(digits, assignment):
    keras.utils.set_random_seed(0)
    model = ki.ImmiscibleFlowMatching(tiny_unet(), assignment=assignment, seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    history = model.fit(digits[:512], batch_size=64, epochs=4, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    gains = history.history["assignment_gain"]
    if assignment is None:
        assert gains == [0.0] * 4
    else:
        assert all(g > 0.01 for g in gains), gains


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(1)
    model = ki.ImmiscibleFlowMatching(
        tiny_unet(), assignment="knn", time_sampling="logit_normal", seed=1
    )
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, use_ema=True))
    model.fit(digits[:256], batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def random_field():
    """An untrained model whose zero-initialised output layer is randomised.

    The UNet starts with a zero output layer, so an (almost) untrained
    model has a (near) zero velocity field, along which every sampler
    agrees trivially. A random smooth field makes the integrators differ.
    """
    keras.utils.set_random_seed(2)
    model = ki.ImmiscibleFlowMatching(tiny_unet(), assignment=None, seed=2)
    rng = np.random.default_rng(2)
    for weight in model.network.weights:
        value = keras.ops.convert_to_numpy(weight)
        if "kernel" in weight.path and not value.any():
            weight.assign(0.3 * rng.standard_normal(value.shape))
    return model


def test_samplers_agree_as_steps_grow(random_field):
    model = random_field
    fine = model.generate(8, steps=64, sampler="heun", seed=3)
    # The field is not trivial: the samples are far from where they started
    # (the initial noise is a numpy stream of the seed, mapped to [0, 1]).
    start = np.random.default_rng(3).standard_normal((8,) + SHAPE)
    start = np.clip((start.astype("float32") + 1) / 2, 0, 1)
    assert np.mean(np.abs(fine - start)) > 0.1
    errors = {}
    for sampler, steps in [("heun", 16), ("euler", 64), ("ddim", 64)]:
        samples = model.generate(8, steps=steps, sampler=sampler, seed=3)
        assert samples.shape == (8,) + SHAPE and samples.dtype == np.float32
        assert np.all(np.isfinite(samples))
        # All integrate the same ODE from the same noise (DDIM clips its
        # predicted data to [-1, 1], which bends a random field's paths a
        # little: 0.03 here).
        errors[sampler] = np.mean(np.abs(samples - fine))
        assert errors[sampler] < (0.05 if sampler == "ddim" else 0.01), (
            sampler,
            errors,
        )
    euler = {
        steps: np.mean(
            np.abs(model.generate(8, steps=steps, sampler="euler", seed=3) - fine)
        )
        for steps in (2, 8, 32)
    }
    # Euler's error shrinks with the step count and was not small to begin
    # with (first order: roughly halves per doubling).
    assert euler[2] > 5 * max(errors["heun"], errors["euler"]), euler
    assert euler[2] > euler[8] > euler[32], euler


def test_same_seed_same_samples_and_round_trip(trained, tmp_path):
    first = trained.generate(4, steps=4, sampler="heun", seed=0)
    np.testing.assert_array_equal(
        first, trained.generate(4, steps=4, sampler="heun", seed=0)
    )
    path = os.path.join(tmp_path, "flow.keras")
    trained.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ki.ImmiscibleFlowMatching)
    assert loaded.time_sampling == "logit_normal"
    assert isinstance(loaded.assigner, ki.assignment.KNNSelection)
    assert isinstance(loaded.schedule, ki.schedules.LinearInterpolation)
    np.testing.assert_array_equal(
        first, loaded.generate(4, steps=4, sampler="heun", seed=0)
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="time_sampling"):
        ki.ImmiscibleFlowMatching(tiny_unet(), time_sampling="beta")
    with pytest.raises(ValueError, match="logit_std"):
        ki.ImmiscibleFlowMatching(tiny_unet(), logit_std=0.0)
    with pytest.raises(TypeError, match="schedule"):
        ki.ImmiscibleFlowMatching(tiny_unet(), schedule="cosine")
    # A velocity sampler needs the straight path.
    model = ki.ImmiscibleDiffusion(tiny_unet(), sampler="euler")
    with pytest.raises(ValueError, match="linear path"):
        model.generate(2, steps=2, seed=0)
