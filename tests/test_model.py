"""ImmiscibleDiffusion: training math, fit workflows, saving, bad input."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_immiscible as ki
from keras_immiscible.assignment import NoiseAssigner
from keras_immiscible.schedules import CosineSchedule

BACKEND = keras.backend.backend()
SHAPE = (8, 8, 1)


def tiny_unet(num_classes=None):
    return ki.layers.UNet(
        image_shape=SHAPE,
        widths=(8, 16),
        block_depth=1,
        embedding_dims=8,
        num_classes=num_classes,
    )


@pytest.fixture(scope="module")
def digits():
    return ki.data.load_digits()


def make_model(assignment=None, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = ki.ImmiscibleDiffusion(
        tiny_unet(), assignment=assignment, seed=seed, **kwargs
    )
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    return model


class FixedNoise(NoiseAssigner):
    """An assigner that returns a known noise, to check the training target."""

    def __init__(self, noise):
        self.noise = noise

    def __call__(self, data, seed=None, return_change=False):
        noise = keras.ops.convert_to_tensor(self.noise)
        return (noise, keras.ops.zeros(())) if return_change else noise


class FixedTime(CosineSchedule):
    def sample_times(self, batch_size, seed=None):
        return keras.ops.full((batch_size,), 0.3, "float32")


def half_network():
    """A network whose output is half its noisy input (noise level unused)."""
    noisy = keras.Input(SHAPE)
    level = keras.Input((1, 1, 1))
    out = keras.layers.Rescaling(0.5)(noisy)
    out = keras.layers.Add()([out, keras.layers.Rescaling(0.0)(level)])
    return keras.Model([noisy, level], out)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_loss_trains_on_the_assigned_noise(digits, prediction):
    images = digits[:4]
    noise = np.random.default_rng(0).standard_normal(images.shape)
    noise = noise.astype("float32")
    schedule = FixedTime()
    model = ki.ImmiscibleDiffusion(
        half_network(),
        schedule=schedule,
        assignment=FixedNoise(noise),
        prediction=prediction,
    )
    loss = keras.ops.convert_to_numpy(model.compute_loss(x=images))

    angle_min, angle_max = np.arccos(0.95), np.arccos(0.02)
    angle = angle_min + 0.3 * (angle_max - angle_min)
    a, s = np.cos(angle), np.sin(angle)
    data = images * 2.0 - 1.0
    noisy = a * data + s * noise
    target = {"epsilon": noise, "x0": data, "v": a * noise - s * data}
    expected = np.mean((0.5 * noisy - target[prediction]) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v", "velocity"])
def test_prediction_conversions_are_exact(prediction):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((3, 8, 8, 1)).astype("float32")
    noise = rng.standard_normal((3, 8, 8, 1)).astype("float32")
    t = np.array([0.1, 0.5, 0.9], "float32")
    model = ki.ImmiscibleDiffusion(tiny_unet(), prediction=prediction)
    a, s = (keras.ops.convert_to_numpy(r) for r in model._rates(t))
    noisy = a * data + s * noise
    target = keras.ops.convert_to_numpy(
        model.training_target(data, noise, a, s)
    )
    # The targets, written out independently of the library.
    expected = {
        "epsilon": noise,
        "x0": data,
        "v": a * noise - s * data,
        "velocity": noise - data,
    }[prediction]
    np.testing.assert_allclose(target, expected, atol=1e-6)
    pred_noise, pred_data = model.split_prediction(target, noisy, a, s)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pred_noise), noise, atol=2e-4
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pred_data), data, atol=2e-4
    )
    # Every target converts into every other one through (noise, data).
    for other in ["epsilon", "x0", "v", "velocity"]:
        converted = ki.models.predictions.target(
            other, pred_data, pred_noise, a, s
        )
        direct = ki.models.predictions.target(other, data, noise, a, s)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(converted),
            keras.ops.convert_to_numpy(direct),
            atol=3e-4,
        )


def test_velocity_conversion_on_a_non_variance_preserving_path():
    rng = np.random.default_rng(2)
    data, noise = rng.standard_normal((2, 5, 4)).astype("float32")
    t = rng.uniform(0.05, 0.95, (5, 1)).astype("float32")
    noisy = (1 - t) * data + t * noise
    pred_noise, pred_data = ki.models.predictions.split(
        "velocity", noise - data, noisy, 1 - t, t
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_data), data,
                               atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_noise), noise,
                               atol=1e-5)


def test_dict_batches_bring_their_own_noise(digits):
    images = digits[:4]
    noise = np.random.default_rng(3).standard_normal(images.shape)
    noise = noise.astype("float32")
    model = ki.ImmiscibleDiffusion(
        half_network(),
        schedule=FixedTime(),
        assignment="linear",
        prediction="epsilon",
    )
    gain = np.full((4,), 0.25, "float32")
    loss = model.compute_loss(
        x={"images": images, "noise": noise, "assignment_gain": gain}
    )
    a, s = (keras.ops.convert_to_numpy(r) for r in FixedTime()(0.3))
    noisy = a * (images * 2.0 - 1.0) + s * noise
    expected = np.mean((0.5 * noisy - noise) ** 2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), expected,
                               rtol=1e-5)
    # The model did not assign (it would have permuted the noise): the gain
    # it logs is the one the batch brought.
    assert float(model.assignment_tracker.result()) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="shape"):
        model.compute_loss(x={"images": images, "noise": noise[:, :4]})
    with pytest.raises(ValueError, match="images"):
        model.compute_loss(x={"pixels": images})


FAMILIES = {
    "diffusion": ki.ImmiscibleDiffusion,
    "flow_matching": ki.ImmiscibleFlowMatching,
    "consistency": ki.ImmiscibleConsistency,
}


@pytest.mark.parametrize(
    "family, policy",
    [
        ("diffusion", "mixed_float16"),
        ("diffusion", "mixed_bfloat16"),
        ("flow_matching", "mixed_bfloat16"),
        ("consistency", "mixed_bfloat16"),
    ],
)
def test_mixed_precision(digits, family, policy):
    images = digits[:32]
    previous = keras.config.dtype_policy()
    losses = {}
    try:
        for name in ("float32", policy):
            keras.config.set_dtype_policy(name)
            keras.utils.set_random_seed(5)
            model = FAMILIES[family](tiny_unet(), assignment="linear", seed=5)
            model.compile(optimizer=keras.optimizers.AdamW(3e-3))
            losses[name] = float(keras.ops.convert_to_numpy(
                model.compute_loss(x=images, training=False)
            ))
        assert model.network.compute_dtype == policy.split("_")[1]
        history = model.fit(images, batch_size=16, epochs=1, verbose=0)
        samples = model.generate(4, steps=3, seed=0)
    finally:
        keras.config.set_dtype_policy(previous)
    # Same weights, same assigned noise: the loss differs only by the
    # network's rounding in half precision.
    np.testing.assert_allclose(losses[policy], losses["float32"], rtol=0.03)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["assignment_gain"][0] > 0.01
    assert samples.dtype == np.float32
    assert np.isfinite(samples).all()
    assert 0.0 <= samples.min() and samples.max() <= 1.0


@pytest.mark.parametrize("assignment", [None, "linear", "knn"])
def test_training_lowers_the_loss_and_logs_the_gain(digits, assignment):
    model = make_model(assignment)
    history = model.fit(
        digits[:512], batch_size=64, epochs=4, verbose=0, shuffle=False
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    gains = history.history["assignment_gain"]
    if assignment is None:
        assert gains == [0.0] * 4
    else:
        # Assigned noise is closer to the data than a plain draw.
        assert all(g > 0.01 for g in gains), gains


def test_same_seed_same_weights_and_samples(digits):
    results = []
    for _ in range(2):
        model = make_model("linear", seed=3)
        model.fit(digits[:128], batch_size=32, epochs=1, verbose=0,
                  shuffle=False)
        weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
        results.append((weights, model.generate(4, steps=3, seed=7)))
    for w1, w2 in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    other = model.generate(4, steps=3, seed=8)
    assert not np.allclose(other, results[1][1])


def test_save_load_generate_and_resume(digits, tmp_path):
    model = make_model("knn", seed=1)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, use_ema=True))
    model.fit(digits[:128], batch_size=32, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.assigner, ki.assignment.KNNSelection)
    assert loaded.assigner.k == 8
    np.testing.assert_array_equal(
        model.generate(4, steps=3, seed=0), loaded.generate(4, steps=3, seed=0)
    )
    # Training resumes from the saved optimizer state.
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()
    before = keras.ops.convert_to_numpy(loaded.network.weights[0])
    loaded.fit(digits[:64], batch_size=32, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 4 + 2
    after = keras.ops.convert_to_numpy(loaded.network.weights[0])
    assert not np.allclose(before, after)


def test_generate_uses_ema_weights_after_fit(digits):
    model = make_model(None, seed=2)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            1e-2, use_ema=True, ema_momentum=0.5
        )
    )
    raw = {}

    class Capture(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw["w"] = keras.ops.convert_to_numpy(
                self.model.network.trainable_weights[0]
            )
            average = self.model.optimizer._model_variables_moving_average
            raw["ema"] = keras.ops.convert_to_numpy(average[0])

    model.fit(digits[:96], batch_size=32, epochs=1, verbose=0,
              callbacks=[Capture()])
    final = keras.ops.convert_to_numpy(model.network.trainable_weights[0])
    np.testing.assert_allclose(final, raw["ema"], atol=1e-6)
    assert not np.allclose(final, raw["w"])


def test_generate_returns_the_callers_range_and_dtype(digits):
    model = make_model(None)
    model.fit(digits[:64], batch_size=32, epochs=1, verbose=0)
    samples = model.generate(3, steps=2, seed=0)
    assert samples.dtype == np.float32 and samples.shape == (3,) + SHAPE
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    uint8 = (digits[:64] * 255).round().astype("uint8")
    model = make_model(None)
    model.fit(uint8, batch_size=32, epochs=1, verbose=0)
    samples = model.generate(3, steps=2, seed=0)
    assert samples.dtype == np.uint8
    # Normalisation: uint8 and float inputs mean the same images.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.normalize(uint8[:2])),
        uint8[:2] / 255.0 * 2 - 1,
        atol=1e-6,
    )


def test_fit_with_tf_data_partial_batches_and_batch_size_one(digits):
    tf = pytest.importorskip("tensorflow")
    model = make_model("linear")
    dataset = tf.data.Dataset.from_tensor_slices(digits[:70]).batch(32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(dataset, epochs=1, verbose=0)  # 32, 32, 6
    assert np.isfinite(history.history["loss"][0])
    # The dataset shuffles itself: no "shuffle=True ... ignored" warning,
    # unless the caller asks for `shuffle=True` (Keras then warns).
    assert not [w for w in caught if "shuffle" in str(w.message)]
    with pytest.warns(UserWarning, match="shuffle"):
        model.fit(dataset.take(1), shuffle=True, verbose=0)
    history = model.fit(digits[:3], batch_size=1, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # A batch of one: linear assignment is the identity, the gain is zero.
    assert history.history["assignment_gain"][0] == pytest.approx(0.0, abs=1e-6)
    result = model.evaluate(dataset, verbose=0, return_dict=True)
    assert np.isfinite(result["loss"])


def test_fit_with_a_torch_dataloader(digits):
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(digits[:64])),
        batch_size=32,
        shuffle=True,
    )
    model = make_model("linear")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(loader, epochs=1, verbose=0)
    # The loader shuffles itself: Keras' "shuffle=True ... ignored" warning
    # is not shown.
    assert not [w for w in caught if "shuffle" in str(w.message)]
    assert np.isfinite(history.history["loss"][0])
    assert history.history["assignment_gain"][0] > 0.01
    # Likewise for a Python generator.
    batches = ((digits[i:i + 32],) for i in (0, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(batches, steps_per_epoch=2, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]


def test_class_conditional_network(digits):
    tf = pytest.importorskip("tensorflow")
    images, labels = ki.data.load_digits(return_labels=True)
    model = ki.ImmiscibleDiffusion(tiny_unet(num_classes=10), assignment="knn")
    model.compile(optimizer="adamw")
    model.fit(images[:64], labels[:64], batch_size=32, epochs=1, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images[:64], labels[:64])
    ).batch(32)
    model.fit(dataset, epochs=1, verbose=0)
    samples = model.generate(2, steps=2, seed=0, labels=[3, 4])
    assert samples.shape == (2,) + SHAPE
    with pytest.raises(ValueError, match="labels"):
        model.generate(2, steps=2, seed=0)
    with pytest.raises(ValueError, match="labels"):
        model.fit(images[:64], batch_size=32, epochs=1, verbose=0)


def test_bad_input_gets_clear_errors(digits):
    model = make_model(None)
    with pytest.raises(ValueError, match="shape"):
        model.fit(np.zeros((4, 8, 8), "float32"), verbose=0)
    with pytest.raises(ValueError, match="shape"):
        model.fit(np.zeros((4, 16, 16, 1), "float32"), verbose=0)
    with pytest.raises(TypeError, match="dtype"):
        model.fit(np.array([["a"] * 4] * 4), verbose=0)
    bad = digits[:8].copy()
    bad[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad, verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.fit(digits[:8] * 255.0, verbose=0)
    with pytest.raises(ValueError, match="prediction"):
        ki.ImmiscibleDiffusion(tiny_unet(), prediction="score")
    with pytest.raises(TypeError, match="network"):
        ki.ImmiscibleDiffusion("unet")
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="adam", loss="mse")


def test_nan_in_a_tf_data_batch_raises(digits):
    tf = pytest.importorskip("tensorflow")
    model = make_model(None)
    bad = digits[:64].copy()
    bad[40, 0, 0, 0] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices(bad).batch(32)
    with pytest.raises(Exception, match="NaN"):
        model.fit(dataset, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="shape"):
        model.fit(tf.data.Dataset.from_tensor_slices(digits[:8]), verbose=0)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow XLA modes")
def test_tensorflow_picks_a_working_compile_mode():
    model = ki.ImmiscibleDiffusion(tiny_unet(), assignment="linear")
    with pytest.warns(UserWarning, match="jit_compile=False"):
        model.compile(optimizer="adamw")
    assert model.jit_compile is False
    model = ki.ImmiscibleDiffusion(
        tiny_unet(), assignment=ki.assignment.LinearAssignment("auction")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.compile(optimizer="adamw", jit_compile=True)
    assert model.jit_compile is True


# ------------------------------------------- stochastic samplers, coupled noise

COUPLED_WARNING = "samples the wrong distribution"


@pytest.fixture(scope="module")
def sampling_models():
    """One model per (family, assignment), built on demand, sharing a
    network whose output is half its input (cheap to sample from)."""
    network = half_network()
    models = {}

    def get(family, assignment):
        if (family, assignment) not in models:
            models[family, assignment] = FAMILIES[family](
                network, assignment=assignment
            )
        return models[family, assignment]

    return get


def coupled_warnings(model, **kwargs):
    """The coupled-noise warnings of one `generate(2, ...)` call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = model.generate(2, seed=0, **kwargs)
    assert np.isfinite(samples).all()
    return [w for w in caught if COUPLED_WARNING in str(w.message)]


@pytest.mark.parametrize("assignment", ["linear", "knn"])
def test_stochastic_sampler_on_a_coupled_model_warns_once(
    sampling_models, assignment
):
    cases = [
        ("diffusion", {"sampler": "ddpm", "steps": 3}, "DDIM(eta=0)"),
        ("diffusion", {"sampler": ki.samplers.DDIM(eta=1.0), "steps": 3},
         "DDIM(eta=0)"),
        ("flow_matching", {"sampler": "ddpm", "steps": 3}, "'euler'"),
        ("consistency", {"steps": 2}, "steps=1"),
        ("consistency", {"sigmas": (80.0, 2.0, 0.2)}, "steps=1"),
    ]
    for family, kwargs, alternative in cases:
        model = sampling_models(family, assignment)
        caught = coupled_warnings(model, **kwargs)
        assert len(caught) == 1, (family, kwargs)
        assert issubclass(caught[0].category, UserWarning)
        assert caught[0].filename == __file__  # the caller's line
        message = str(caught[0].message)
        assert alternative in message, message
        assert repr(model.assigner) in message
        # Once per model and sampler: a second call, or an equal instance,
        # is silent.
        again = dict(kwargs)
        if isinstance(again.get("sampler"), ki.samplers.DDIM):
            again["sampler"] = ki.samplers.DDIM(eta=1.0)
        assert not coupled_warnings(model, **again), (family, kwargs)
    # The model's own default sampler is checked too.
    model = ki.ImmiscibleDiffusion(
        sampling_models("diffusion", assignment).network,
        assignment=assignment, sampler="ddpm",
    )
    assert len(coupled_warnings(model, steps=3)) == 1


@pytest.mark.parametrize("assignment", ["linear", "knn", None])
def test_deterministic_samplers_and_vanilla_models_do_not_warn(
    sampling_models, assignment
):
    cases = [
        ("diffusion", {"steps": 3}),  # default "ddim"
        ("diffusion", {"sampler": ki.samplers.DDIM(eta=0.0), "steps": 3}),
        ("diffusion", {"sampler": "ddpm", "steps": 1}),  # one step: no noise
        ("flow_matching", {"sampler": "euler", "steps": 3}),
        ("flow_matching", {"sampler": "heun", "steps": 3}),
        ("flow_matching", {"sampler": "ddim", "steps": 3}),
        ("consistency", {}),  # one step
        ("consistency", {"sigmas": (80.0,)}),
    ]
    if assignment is None:  # independent noise: stochastic samplers are fine
        cases += [
            ("diffusion", {"sampler": "ddpm", "steps": 3}),
            ("diffusion", {"sampler": ki.samplers.DDIM(eta=1.0), "steps": 3}),
            ("flow_matching", {"sampler": "ddpm", "steps": 3}),
            ("consistency", {"steps": 2}),
        ]
    for family, kwargs in cases:
        model = sampling_models(family, assignment)
        assert not coupled_warnings(model, **kwargs), (family, kwargs)
