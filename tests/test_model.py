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
        widths=(8,),
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

    def __call__(self, data, seed=None, return_gain=False):
        noise = keras.ops.convert_to_tensor(self.noise)
        return (noise, keras.ops.zeros(())) if return_gain else noise


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
    target = keras.ops.convert_to_numpy(model.training_target(data, noise, a, s))
    # The targets, written out independently of the library.
    expected = {
        "epsilon": noise,
        "x0": data,
        "v": a * noise - s * data,
        "velocity": noise - data,
    }[prediction]
    np.testing.assert_allclose(target, expected, atol=1e-6)
    pred_noise, pred_data = model.split_prediction(target, noisy, a, s)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_noise), noise, atol=2e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_data), data, atol=2e-4)
    # Every target converts into every other one through (noise, data).
    for other in ["epsilon", "x0", "v", "velocity"]:
        converted = ki.models.predictions.target(other, pred_data, pred_noise, a, s)
        direct = ki.models.predictions.target(other, data, noise, a, s)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(converted),
            keras.ops.convert_to_numpy(direct),
            atol=3e-4,
        )


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v", "velocity"])
def test_conversions_are_exact_on_a_non_variance_preserving_path(prediction):
    # The straight path x_t = (1 - t) x0 + t eps has a^2 + b^2 < 1 inside
    # (0, 1): a conversion that assumes a variance-preserving schedule is off
    # by that factor (0.5 at t = 0.5).
    rng = np.random.default_rng(2)
    data, noise = rng.standard_normal((2, 5, 4)).astype("float32")
    t = rng.uniform(0.05, 0.95, (5, 1)).astype("float32")
    a, b = 1 - t, t
    noisy = a * data + b * noise
    output = {
        "epsilon": noise,
        "x0": data,
        "v": a * noise - b * data,
        "velocity": noise - data,
    }[prediction]
    pred_noise, pred_data = ki.models.predictions.split(prediction, output, noisy, a, b)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_data), data, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_noise), noise, atol=1e-4)


def test_v_prediction_model_on_the_straight_path(digits):
    # The model-level path: the v-target a diffusion model trains on under
    # LinearInterpolation converts back to the batch's data and noise.
    images = digits[:4]
    data = images * 2.0 - 1.0
    noise = np.random.default_rng(4).standard_normal(images.shape)
    noise = noise.astype("float32")
    model = ki.ImmiscibleDiffusion(
        tiny_unet(), schedule="linear_interpolation", prediction="v"
    )
    t = np.array([0.2, 0.4, 0.6, 0.8], "float32")
    a, s = (keras.ops.convert_to_numpy(r) for r in model._rates(t))
    np.testing.assert_allclose(a + s, 1.0, atol=1e-6)
    noisy = a * data + s * noise
    target = model.training_target(data, noise, a, s)
    pred_noise, pred_data = model.split_prediction(target, noisy, a, s)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_data), data, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_noise), noise, atol=1e-4)


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
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), expected, rtol=1e-5)
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


class RecordingLinearAssignment(ki.assignment.LinearAssignment):
    """Linear assignment that records the dtypes it computes the cost in."""

    dtypes = []

    def __call__(self, data, seed=None, return_gain=False):
        outputs = super().__call__(data, seed=seed, return_gain=return_gain)
        noise = outputs[0] if return_gain else outputs
        self.dtypes.append(
            (
                keras.backend.standardize_dtype(data.dtype),
                keras.backend.standardize_dtype(noise.dtype),
            )
        )
        return outputs


def randomize_zero_kernels(network, seed):
    """Gives the zero-initialised layers (the UNet's output) random weights.

    With the output layer at zero every precision outputs exactly 0 and a
    comparison of losses only compares noise draws.
    """
    rng = np.random.default_rng(seed)
    changed = 0
    for weight in network.weights:
        value = keras.ops.convert_to_numpy(weight)
        if "kernel" in weight.path and not value.any():
            weight.assign(0.2 * rng.standard_normal(value.shape))
            changed += 1
    assert changed, "no zero-initialised kernel found"


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
    losses, outputs = {}, {}
    try:
        for name in ("float32", policy):
            keras.config.set_dtype_policy(name)
            keras.utils.set_random_seed(5)
            RecordingLinearAssignment.dtypes = []
            model = FAMILIES[family](
                tiny_unet(), assignment=RecordingLinearAssignment(), seed=5
            )
            randomize_zero_kernels(model.network, seed=5)
            model.compile(optimizer=keras.optimizers.AdamW(3e-3))
            losses[name] = float(
                keras.ops.convert_to_numpy(model.compute_loss(x=images, training=False))
            )
            level = np.full((4, 1, 1, 1), 0.5, "float32")
            outputs[name] = keras.ops.convert_to_numpy(
                keras.ops.cast(model.network([images[:4] * 2 - 1, level]), "float32")
            )
            # The cost of the assignment is computed in float32 under every
            # policy: data and noise reach the solver as float32.
            assert RecordingLinearAssignment.dtypes == [("float32", "float32")]
        assert model.network.compute_dtype == policy.split("_")[1]
        history = model.fit(images, batch_size=16, epochs=1, verbose=0)
        assert all(
            d == ("float32", "float32") for d in RecordingLinearAssignment.dtypes
        )
        samples = model.generate(4, steps=3, seed=0)
    finally:
        keras.config.set_dtype_policy(previous)
    # A network that outputs something: the comparison below is not 0 vs 0.
    assert np.abs(outputs["float32"]).mean() > 0.05
    # Same weights, same assigned noise: the outputs and the loss differ only
    # by the network's rounding in half precision.
    np.testing.assert_allclose(
        outputs[policy],
        outputs["float32"],
        atol=0.05 * np.abs(outputs["float32"]).max(),
    )
    np.testing.assert_allclose(losses[policy], losses["float32"], rtol=0.03)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["assignment_gain"][0] > 0.01
    assert samples.dtype == np.float32
    assert np.isfinite(samples).all()
    assert 0.0 <= samples.min() and samples.max() <= 1.0


def test_second_fit_with_mixed_float16_and_ema(digits):
    # Keras wraps the optimizer in a LossScaleOptimizer under mixed_float16;
    # on JAX the EMA write-back at the end of `fit` then left variables
    # sharing buffers, and the second `fit` failed ("donate the same buffer
    # twice").
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_float16")
        keras.utils.set_random_seed(6)
        model = ki.ImmiscibleDiffusion(tiny_unet(), assignment=None, seed=6)
        model.compile(optimizer=keras.optimizers.AdamW(3e-3, use_ema=True))
        assert hasattr(model.optimizer, "inner_optimizer")
        model.fit(digits[:32], batch_size=16, epochs=1, verbose=0)
        first = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        history = model.fit(digits[:32], batch_size=16, epochs=1, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    assert np.isfinite(history.history["loss"][0])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4
    second = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("assignment", [None, "linear", "knn"])
def test_training_lowers_the_loss_and_logs_the_gain(digits, assignment):
    model = make_model(assignment)
    history = model.fit(digits[:512], batch_size=64, epochs=4, verbose=0, shuffle=False)
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
        model.fit(digits[:128], batch_size=32, epochs=1, verbose=0, shuffle=False)
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
        optimizer=keras.optimizers.AdamW(1e-2, use_ema=True, ema_momentum=0.5)
    )
    raw = {}

    class Capture(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw["w"] = keras.ops.convert_to_numpy(
                self.model.network.trainable_weights[0]
            )
            average = self.model.optimizer._model_variables_moving_average
            raw["ema"] = keras.ops.convert_to_numpy(average[0])

    model.fit(digits[:96], batch_size=32, epochs=1, verbose=0, callbacks=[Capture()])
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
    batches = ((digits[i : i + 32],) for i in (0, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(batches, steps_per_epoch=2, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]


def labelled_half_network(num_classes=3):
    """`0.5 * noisy + table[label]`, with a known table (row c is 0.3 c)."""
    noisy = keras.Input(SHAPE)
    level = keras.Input((1, 1, 1))
    labels = keras.Input((), dtype="int32")
    table = np.arange(num_classes + 1, dtype="float32")[:, None] * 0.3
    embedded = keras.layers.Embedding(
        num_classes + 1,
        1,
        embeddings_initializer=keras.initializers.Constant(table),
    )(labels)
    offset = keras.layers.Reshape((1, 1, 1))(embedded)
    out = keras.layers.Add()(
        [
            keras.layers.Rescaling(0.5)(noisy),
            keras.layers.Rescaling(0.0)(level),
            offset,
        ]
    )
    return keras.Model([noisy, level, labels], out), table


class RecordingNoise(ki.assignment.LinearAssignment):
    """Linear assignment that keeps the noise it assigned (eager calls)."""

    def __call__(self, data, seed=None, return_gain=False):
        outputs = super().__call__(data, seed=seed, return_gain=return_gain)
        self.noise = keras.ops.convert_to_numpy(outputs[0])
        return outputs


def test_labels_stay_with_their_images_under_linear_assignment(digits):
    images, labels = ki.data.load_digits(return_labels=True)
    images, labels = images[:16], labels[:16] % 3
    network, table = labelled_half_network()
    assigner = RecordingNoise()
    model = ki.ImmiscibleDiffusion(
        network,
        schedule=FixedTime(),
        assignment=assigner,
        prediction="epsilon",
        seed=0,
    )
    loss = keras.ops.convert_to_numpy(model.compute_loss(x=images, y=labels))
    noise = assigner.noise
    data = images * 2.0 - 1.0
    # The assignment permuted the noise (not the identity pairing) ...
    assert not np.allclose(noise, np.random.default_rng(0).standard_normal(noise.shape))
    a, s = (keras.ops.convert_to_numpy(r) for r in FixedTime()(0.3))

    def expected(with_labels):
        offset = table[with_labels].reshape(-1, 1, 1, 1)
        return np.mean((0.5 * (a * data + s * noise) + offset - noise) ** 2)

    # ... and each image's label reached the network with that image.
    np.testing.assert_allclose(loss, expected(labels), rtol=1e-5)
    assert abs(expected(labels) - expected(np.roll(labels, 1))) > 1e-3


def test_class_conditional_network(digits):
    tf = pytest.importorskip("tensorflow")
    images, labels = ki.data.load_digits(return_labels=True)
    keras.utils.set_random_seed(0)
    model = ki.ImmiscibleDiffusion(tiny_unet(num_classes=10), assignment="knn", seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    model.fit(images[:256], labels[:256], batch_size=32, epochs=2, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((images[:64], labels[:64])).batch(32)
    model.fit(dataset, epochs=1, verbose=0)
    threes = model.generate(4, steps=4, seed=0, labels=[3] * 4)
    fours = model.generate(4, steps=4, seed=0, labels=[4] * 4)
    assert threes.shape == (4,) + SHAPE
    # Same noise, different labels: a model that ignored its labels would
    # give identical images.
    assert np.abs(threes - fours).mean() > 1e-4
    np.testing.assert_array_equal(
        threes, model.generate(4, steps=4, seed=0, labels=[3] * 4)
    )
    with pytest.raises(ValueError, match="labels"):
        model.generate(2, steps=2, seed=0)
    with pytest.raises(ValueError, match="labels"):
        model.fit(images[:64], batch_size=32, epochs=1, verbose=0)


def test_out_of_range_labels_get_clear_errors(digits):
    tf = pytest.importorskip("tensorflow")
    images, labels = ki.data.load_digits(return_labels=True)
    images, labels = images[:32], labels[:32].copy()
    model = ki.ImmiscibleDiffusion(tiny_unet(num_classes=10), assignment=None)
    model.compile(optimizer="adamw")
    # The UNet embeds 10 classes and the null label 10: [0, 10] is valid.
    assert model.label_limit == 11
    for bad in (-1, 11):
        wrong = labels.copy()
        wrong[5] = bad
        with pytest.raises(ValueError, match=r"\[0, 10\]"):
            model.fit(images, wrong, batch_size=16, verbose=0)
        with pytest.raises(ValueError, match=r"\[0, 10\]"):
            model.fit((images, wrong), batch_size=16, verbose=0)
        with pytest.raises(ValueError, match=r"\[0, 10\]"):
            model.generate(2, steps=1, labels=[3, bad])
        dataset = tf.data.Dataset.from_tensor_slices((images, wrong)).batch(16)
        with pytest.raises(Exception, match=r"\[0, 10\]"):
            model.fit(dataset, verbose=0)
        with pytest.raises(ValueError, match=r"\[0, 10\]"):
            model.compute_loss(x=images[:8], y=keras.ops.convert_to_tensor(wrong[:8]))
    with pytest.raises(ValueError, match="integer"):
        model.generate(2, steps=1, labels=[1.5, 2.0])


def test_sample_weight_weights_the_per_sample_losses(digits):
    images = digits[:4]
    noise = np.random.default_rng(3).standard_normal(images.shape)
    noise = noise.astype("float32")
    model = ki.ImmiscibleDiffusion(
        half_network(),
        schedule=FixedTime(),
        assignment=FixedNoise(noise),
    )
    weights = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    loss = keras.ops.convert_to_numpy(
        model.compute_loss(x=images, sample_weight=weights)
    )
    a, s = (keras.ops.convert_to_numpy(r) for r in FixedTime()(0.3))
    noisy = a * (images * 2.0 - 1.0) + s * noise
    per_image = np.mean((0.5 * noisy - noise) ** 2, axis=(1, 2, 3))
    # Keras' reduction of weighted losses: sum(w_i l_i) / B.
    np.testing.assert_allclose(loss, np.sum(weights * per_image) / 4, rtol=1e-5)
    assert abs(loss - per_image.mean()) > 1e-3 * per_image.mean()
    with pytest.raises(ValueError, match="sample_weight"):
        model.compute_loss(x=images, sample_weight=np.ones((4, 2), "float32"))


def test_fit_honours_sample_weight(digits):
    trained = []
    for weights in (np.ones(32, "float32"), np.r_[np.ones(16), np.zeros(16)]):
        model = make_model(None, seed=4)
        model.fit(
            digits[:32],
            sample_weight=weights.astype("float32"),
            batch_size=32,
            epochs=3,
            verbose=0,
            shuffle=False,
        )
        trained.append(
            np.concatenate(
                [
                    keras.ops.convert_to_numpy(w).ravel()
                    for w in model.network.trainable_weights
                ]
            )
        )
    # Same seed, data and noise: only the weights differ, so a model that
    # ignored them would train to identical weights.
    assert np.abs(trained[0] - trained[1]).max() > 1e-4


def test_model_call_and_predict_point_to_generate(digits):
    model = make_model(None)
    model.fit(digits[:32], batch_size=16, epochs=1, verbose=0)
    with pytest.raises(TypeError, match="generate"):
        model(digits[:4])
    with pytest.raises(TypeError, match="generate"):
        model.predict(digits[:4], verbose=0)
    with pytest.raises(TypeError, match="generate"):
        model.predict_on_batch(digits[:4])
    # Keras' own train and test steps still work.
    assert np.all(np.isfinite(model.evaluate(digits[:32], batch_size=16, verbose=0)))
    assert np.all(np.isfinite(model.train_on_batch(digits[:16])))
    assert np.all(np.isfinite(model.test_on_batch(digits[:16])))


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_generate_does_not_depend_on_batch_size(digits, sampler):
    model = make_model(None, seed=5)
    model.fit(digits[:64], batch_size=32, epochs=1, verbose=0)
    kwargs = dict(steps=3, seed=11, sampler=sampler)
    if sampler == "euler":
        model = ki.ImmiscibleDiffusion(
            model.network,
            schedule="linear_interpolation",
            prediction="velocity",
            assignment=None,
        )
    whole = model.generate(6, **kwargs)
    for batch_size in (1, 4, 6, 100):
        np.testing.assert_allclose(
            model.generate(6, batch_size=batch_size, **kwargs),
            whole,
            atol=1e-5,
        )
    # The seed still matters, and image i is the same image in any chunk.
    assert not np.allclose(model.generate(6, steps=3, seed=12, sampler=sampler), whole)
    np.testing.assert_allclose(model.generate(2, **kwargs), whole[:2], atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        model.generate(6, batch_size=0, **kwargs)
    with pytest.raises(ValueError, match="seed"):
        model.generate(6, steps=3, seed=-1)


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


def test_an_endless_dataset_needs_steps_per_epoch(digits):
    tf = pytest.importorskip("tensorflow")
    model = make_model(None)
    endless = tf.data.Dataset.from_tensor_slices(digits[:32]).batch(16).repeat()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(endless, epochs=1, verbose=0)
    history = model.fit(endless, epochs=2, steps_per_epoch=2, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4
    assert len(history.history["loss"]) == 2


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow XLA modes")
def test_tensorflow_picks_a_working_compile_mode(digits):
    model = ki.ImmiscibleDiffusion(tiny_unet(), assignment="linear")
    model.compile(optimizer="adamw", jit_compile=True)
    with pytest.warns(UserWarning, match="jit_compile=False"):
        model.fit(digits[:16], batch_size=16, verbose=0)
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
def test_stochastic_sampler_on_a_coupled_model_warns_once(sampling_models, assignment):
    cases = [
        ("diffusion", {"sampler": "ddpm", "steps": 3}, "DDIM(eta=0)"),
        (
            "diffusion",
            {"sampler": ki.samplers.DDIM(eta=1.0), "steps": 3},
            "DDIM(eta=0)",
        ),
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
        assignment=assignment,
        sampler="ddpm",
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


@pytest.mark.parametrize("assignment", [None, "knn"])
def test_an_eager_training_step_brings_no_batch_to_the_host(
    digits, assignment, monkeypatch
):
    # Eager steps (PyTorch, run_eagerly) check values as they go; on a GPU a
    # copy of the batch to numpy per step would be a transfer and a sync.
    # Only scalars may come to the host (the checks' booleans).
    model = make_model(assignment, seed=7)
    images = keras.ops.convert_to_tensor(digits[:16])
    sizes = []
    to_numpy = keras.ops.convert_to_numpy

    def spy(x):
        value = to_numpy(x)
        sizes.append(int(np.size(value)))
        return value

    monkeypatch.setattr(keras.ops, "convert_to_numpy", spy)
    loss = model.compute_loss(x=images)
    monkeypatch.undo()
    assert np.isfinite(keras.ops.convert_to_numpy(loss))
    assert sizes and max(sizes) == 1, sizes


def test_generate_progress_bar_counts_network_evaluations(digits, capsys):
    model = make_model(None, seed=8)
    # Random output weights instead of a fit (no training step to compile):
    # the samples compared below are not those of a zero network.
    randomize_zero_kernels(model.network, seed=8)
    capsys.readouterr()
    quiet = model.generate(4, steps=3, seed=0, batch_size=2, verbose=0)
    assert capsys.readouterr().out == ""
    # "auto" stays quiet for a call this short.
    model.generate(4, steps=3, seed=0, batch_size=2)
    assert capsys.readouterr().out == ""
    loud = model.generate(4, steps=3, seed=0, batch_size=2, verbose=1)
    # Two chunks of three DDIM steps: six network evaluations.
    assert "6/6" in capsys.readouterr().out
    np.testing.assert_array_equal(loud, quiet)
    # Heun evaluates twice per step but once on its Euler last step.
    flow = ki.ImmiscibleFlowMatching(model.network, assignment=None)
    flow.generate(2, steps=3, seed=0, sampler="heun", verbose=1)
    assert "5/5" in capsys.readouterr().out
    assert ki.samplers.Heun(final_step="heun").network_evaluations(3) == 6
    with pytest.raises(ValueError, match="verbose"):
        model.generate(2, steps=1, verbose=2)
