"""Running moments of the training noise, and generate(initial_noise=...)."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_immiscible as ki
from keras_immiscible.assignment import NoiseAssigner

BACKEND = keras.backend.backend()
SHAPE = (8, 8, 1)


def tiny_unet():
    return ki.layers.UNet(
        image_shape=SHAPE, widths=(8,), block_depth=1, embedding_dims=8
    )


@pytest.fixture(scope="module")
def digits():
    return ki.data.load_digits()[:192]


class DataNoise(NoiseAssigner):
    """A deterministic stand-in: the "noise" is a fixed function of the data,
    so its moments over an epoch are known whatever the shuffling."""

    def __call__(self, data, seed=None, return_gain=False):
        noise = 0.5 * data + 0.1 + 0.3 * keras.ops.square(data)
        return (noise, keras.ops.zeros(())) if return_gain else noise


def data_noise(images):
    data = images * 2.0 - 1.0
    return 0.5 * data + 0.1 + 0.3 * data**2


def assert_moments(model, noise, count):
    noise = noise.astype("float64")
    assert model.noise_count == count
    np.testing.assert_allclose(model.noise_mean, noise.mean(axis=0), atol=2e-5)
    np.testing.assert_allclose(model.noise_std, noise.std(axis=0), atol=2e-4)


def make_model(family=ki.ImmiscibleDiffusion, assignment=None, seed=0):
    keras.utils.set_random_seed(seed)
    return family(tiny_unet(), assignment=assignment, seed=seed)


# "xla": an XLA-compiled step (JAX's default; TensorFlow's "auto" picks no
# XLA for these models on this machine). Torch's jit would be torch.compile.
COMPILE_MODES = [
    pytest.param({}, id="default"),
    pytest.param(
        {"jit_compile": True},
        id="xla",
        marks=pytest.mark.skipif(BACKEND == "torch", reason="torch.compile"),
    ),
    pytest.param({"jit_compile": False}, id="no_jit"),
    pytest.param({"run_eagerly": True}, id="eager"),
]


@pytest.mark.parametrize("mode", COMPILE_MODES)
def test_moments_of_the_assigned_noise(digits, mode):
    model = make_model(assignment=DataNoise())
    assert model.noise_count == 0.0
    assert model.noise_mean.shape == SHAPE and model.noise_std.shape == SHAPE
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), **mode)
    if "jit_compile" in mode:
        assert model.jit_compile is mode["jit_compile"]
    # 192 images in batches of 64, 64, 64, twice (uneven last batches would
    # weigh in by their size as well: see the next test).
    model.fit(digits, batch_size=64, epochs=2, verbose=0)
    assert_moments(model, data_noise(digits), 2 * len(digits))


@pytest.mark.parametrize("mode", COMPILE_MODES[:3])
def test_moments_of_noise_brought_by_the_batches(digits, mode):
    noise = np.random.default_rng(0).normal(0.3, 0.7, digits.shape)
    noise = noise.astype("float32")
    model = make_model(assignment="knn")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), **mode)
    # 192 = 80 + 80 + 32: the short last batch counts by its size.
    model.fit({"images": digits, "noise": noise}, batch_size=80, epochs=1, verbose=0)
    assert_moments(model, noise, len(digits))


def test_evaluate_leaves_the_moments_alone(digits):
    model = make_model(assignment=DataNoise())
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(digits, batch_size=64, epochs=1, verbose=0)
    before = model.noise_mean, model.noise_std, model.noise_count
    model.evaluate(digits[:64], batch_size=32, verbose=0)
    after = model.noise_mean, model.noise_std, model.noise_count
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]


def test_knn_noise_is_pulled_towards_the_data(digits):
    # Digits are mostly background (-1 after scaling): KNN-selected noise
    # has a negative mean there and a std below 1; plain noise does not.
    means = {}
    for assignment in (None, ki.assignment.KNNSelection(k=8)):
        model = make_model(assignment=assignment)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        model.fit(digits, batch_size=64, epochs=3, verbose=0)
        means[assignment is None] = model.noise_mean.mean()
        if assignment is not None:
            assert model.noise_std.mean() < 0.97
    # (k=8 at 8x8 gives about -0.06 over all pixels; plain noise's average
    # has a standard error of about 0.005 here.)
    assert abs(means[True]) < 0.02
    assert means[False] < -0.03


class EchoDiffusion(ki.ImmiscibleDiffusion):
    """`sample` returns its initial noise, and keeps a copy of it."""

    def sample(self, noise, steps, sampler, seed, labels=None):
        self.seen.append(keras.ops.convert_to_numpy(noise))
        return noise


def echo_model(mean=None, std=None, count=1000.0):
    model = EchoDiffusion(tiny_unet(), assignment=None)
    model.seen = []
    if mean is not None:
        model._noise_mean.assign(mean)
        model._noise_square_mean.assign(std**2 + mean**2)
        model._noise_count.assign(count)
    return model


def test_matched_initial_noise_has_the_tracked_moments():
    rng = np.random.default_rng(1)
    mean = rng.uniform(-0.5, 0.5, SHAPE).astype("float32")
    std = rng.uniform(0.5, 1.0, SHAPE).astype("float32")
    model = echo_model(mean, std)
    np.testing.assert_allclose(model.noise_mean, mean)
    np.testing.assert_allclose(model.noise_std, std, rtol=1e-5)
    model.generate(4000, steps=1, seed=3, batch_size=1000, initial_noise="matched")
    noise = np.concatenate(model.seen)
    assert noise.shape == (4000,) + SHAPE
    # Standard errors: std / sqrt(4000) ~ 0.016 for the mean.
    np.testing.assert_allclose(noise.mean(axis=0), mean, atol=0.07)
    np.testing.assert_allclose(noise.std(axis=0), std, rtol=0.08)
    # It is the standard draw of the same seed, moved and scaled.
    model.seen = []
    model.generate(4000, steps=1, seed=3, batch_size=1000)
    standard = np.concatenate(model.seen)
    np.testing.assert_allclose(noise, mean + std * standard, atol=1e-5)


def test_standard_initial_noise_is_unchanged():
    rng = np.random.default_rng(2)
    mean = rng.uniform(-0.5, 0.5, SHAPE).astype("float32")
    std = np.full(SHAPE, 0.5, "float32")
    model = echo_model(mean, std)
    images = model.generate(8, steps=1, seed=5)
    # The default is N(0, I), whatever the tracked moments: the seed's
    # stream of standard normals (numpy's, the same on every backend).
    expected = np.random.default_rng(5).standard_normal((8,) + SHAPE, dtype=np.float32)
    np.testing.assert_allclose(model.seen[0], expected, atol=1e-6)
    np.testing.assert_allclose(
        images, np.clip((expected + 1.0) / 2.0, 0.0, 1.0), atol=1e-6
    )
    again = model.generate(8, steps=1, seed=5, initial_noise="standard")
    np.testing.assert_array_equal(images, again)


def test_initial_noise_errors():
    model = echo_model()
    with pytest.raises(ValueError, match="initial_noise"):
        model.generate(2, steps=1, initial_noise="gaussian")
    with pytest.raises(ValueError, match="initial_noise"):
        model.generate(2, steps=1, initial_noise=None)
    with pytest.raises(ValueError, match="not trained"):
        model.generate(2, steps=1, initial_noise="matched")
    assert model.seen == []


@pytest.mark.parametrize(
    "family",
    [ki.ImmiscibleDiffusion, ki.ImmiscibleFlowMatching, ki.ImmiscibleConsistency],
)
def test_every_family_generates_from_matched_noise(digits, family):
    model = make_model(family, assignment="knn")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(digits[:64], batch_size=32, epochs=1, verbose=0)
    # (Two steps, except for consistency, whose multistep sampler re-noises
    # and warns under coupling.)
    steps = 1 if family is ki.ImmiscibleConsistency else 2
    samples = model.generate(4, steps=steps, seed=0, initial_noise="matched")
    assert samples.shape == (4,) + SHAPE and np.isfinite(samples).all()
    assert not np.allclose(samples, model.generate(4, steps=steps, seed=0))


def test_save_load_keeps_the_moments(digits, tmp_path):
    model = make_model(ki.ImmiscibleConsistency, assignment="knn", seed=1)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(digits[:128], batch_size=32, epochs=1, verbose=0)
    assert model.noise_count == 128
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.noise_count == 128
    np.testing.assert_array_equal(loaded.noise_mean, model.noise_mean)
    np.testing.assert_array_equal(loaded.noise_std, model.noise_std)
    assert int(keras.ops.convert_to_numpy(loaded.training_steps)) == 4
    np.testing.assert_array_equal(
        model.generate(4, steps=1, seed=0, initial_noise="matched"),
        loaded.generate(4, steps=1, seed=0, initial_noise="matched"),
    )
    # Training on continues the running means.
    loaded.fit(digits[:64], batch_size=32, epochs=1, verbose=0)
    assert loaded.noise_count == 192


def test_loading_weights_saved_before_the_moments_existed():
    model = make_model(ki.ImmiscibleConsistency)
    model.training_steps.assign(7)
    # The state an older version saved: the consistency counter only.
    old_store = {"0": np.array(3, "int32")}
    with pytest.warns(UserWarning, match="no noise moments"):
        model.load_own_variables(old_store)
    assert int(keras.ops.convert_to_numpy(model.training_steps)) == 3
    assert model.noise_count == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.load_own_variables(
            {
                "0": np.array(5.0, "float32"),
                "1": np.full(SHAPE, 0.25, "float32"),
                "2": np.full(SHAPE, 0.5, "float32"),
                "3": np.array(9, "int32"),
            }
        )
    assert model.noise_count == 5
    np.testing.assert_allclose(model.noise_std, np.sqrt(0.5 - 0.0625))
    assert int(keras.ops.convert_to_numpy(model.training_steps)) == 9
