"""SampleGrid, GenerativeEvaluation and ema_weights, with a stand-in model.

The stand-in `TinyGenerator` has trainable Dense weights, a loss that
`fit` can minimize, and a `generate` whose images are a known function of
its weights (sigmoid of kernel + bias, plus seeded noise), so every image a
callback produces can be recomputed by hand from recorded weights.
"""

import csv
import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_immiscible import callbacks
from keras_immiscible import metrics
from keras_immiscible.utils import images as image_utils

SHAPE = (4, 4, 1)
PIXELS = int(np.prod(SHAPE))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def expected_images(kernel, bias, num_images, seed):
    """What `TinyGenerator.generate` must return for these weights."""
    means = sigmoid(kernel[0] + bias).reshape(SHAPE)
    noise = np.random.default_rng(seed).normal(size=(num_images,) + SHAPE)
    return np.clip(means + 0.1 * noise, 0.0, 1.0).astype("float32")


class TinyGenerator(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(
            PIXELS, kernel_initializer="zeros", bias_initializer="zeros"
        )
        self.generate_calls = []

    def call(self, x):
        ones = keras.ops.ones((keras.ops.shape(x)[0], 1))
        return keras.ops.sigmoid(self.dense(ones))

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        target = keras.ops.reshape(x, (keras.ops.shape(x)[0], PIXELS))
        return keras.ops.mean((target - y_pred) ** 2)

    def generate(self, num_images, steps=20, seed=0):
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in self.dense.weights)
        images = expected_images(kernel, bias, num_images, seed)
        self.generate_calls.append(
            dict(num_images=num_images, steps=steps, seed=seed, images=images)
        )
        return images


class WeightRecorder(keras.callbacks.Callback):
    """Records the training weights after every batch and, at the end of
    every epoch, the weights the model holds when this callback runs."""

    def __init__(self):
        super().__init__()
        self.batches, self.epoch_ends = [], []

    def _weights(self):
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()  # JAX keeps the state outside during an epoch
        return [keras.ops.convert_to_numpy(w).copy() for w in self.model.dense.weights]

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(self._weights())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(self._weights())


def manual_ema(batch_weights, momentum):
    """Keras' EMA recursion, by hand: the average starts at the weights
    after the first step, then avg = m * avg + (1 - m) * w."""
    averages, current = [], None
    for weights in batch_weights:
        if current is None:
            current = [w.copy() for w in weights]
        else:
            current = [
                momentum * a + (1 - momentum) * w for a, w in zip(current, weights)
            ]
        averages.append(current)
    return averages


def training_images(n=32, seed=0):
    rng = np.random.default_rng(seed)
    pattern = np.linspace(0.1, 0.9, PIXELS).reshape(SHAPE)
    return np.clip(pattern + 0.05 * rng.normal(size=(n,) + SHAPE), 0, 1).astype(
        "float32"
    )


def make_model(use_ema=True, momentum=0.6):
    model = TinyGenerator()
    model.compile(
        optimizer=keras.optimizers.AdamW(0.05, use_ema=use_ema, ema_momentum=momentum)
    )
    return model


def feature_model():
    """A small injected feature extractor: Flatten + Dense with fixed weights."""
    kernel = np.random.default_rng(1).normal(size=(PIXELS, 6)).astype("float32")
    model = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(6)]
    )
    model.set_weights([kernel, np.zeros(6, "float32")])
    return model, kernel


def reference_mmd2(fx, fy):
    d = fx.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((fx, fx), (fy, fy), (fx, fy)))
    m, n = len(fx), len(fy)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


STEPS_PER_EPOCH = 4


def test_fit_with_sample_grid_and_generative_evaluation(tmp_path):
    data = training_images()
    real = training_images(24, seed=5)  # = num_images: KID on the full sets
    extractor, kernel = feature_model()
    model = make_model(momentum=0.6)
    recorder = WeightRecorder()
    grid = callbacks.SampleGrid(
        str(tmp_path / "samples" / "epoch_{epoch}.png"),
        num_images=16,
        steps=3,
        seed=11,
        scale=2,
    )
    evaluation = callbacks.GenerativeEvaluation(
        real,
        metrics=["kid", metrics.FID(feature_extractor=extractor)],
        num_images=24,
        steps=5,
        seed=7,
        batch_size=10,
        feature_extractor=extractor,
        subset_size=1000,
        verbose=0,
    )
    csv_path = tmp_path / "log.csv"
    checkpoint = str(tmp_path / "best.weights.h5")
    history = model.fit(
        data,
        batch_size=8,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[
            grid,
            evaluation,
            recorder,
            keras.callbacks.CSVLogger(str(csv_path)),
            keras.callbacks.ModelCheckpoint(
                checkpoint,
                monitor="val_kid",
                mode="min",
                save_best_only=True,
                save_weights_only=True,
            ),
        ],
    )
    assert len(recorder.batches) == 2 * STEPS_PER_EPOCH
    emas = manual_ema(recorder.batches, 0.6)
    calls = model.generate_calls
    # Per epoch: one SampleGrid call, then GenerativeEvaluation's three
    # batches (10 + 10 + 4 images, seeds 7, 8, 9).
    assert [(c["num_images"], c["steps"], c["seed"]) for c in calls] == [
        (16, 3, 11),
        (10, 5, 7),
        (10, 5, 8),
        (4, 5, 9),
    ] * 2
    for epoch in range(2):
        ema = emas[(epoch + 1) * STEPS_PER_EPOCH - 1]
        train = recorder.batches[(epoch + 1) * STEPS_PER_EPOCH - 1]
        epoch_calls = calls[4 * epoch : 4 * epoch + 4]
        # Samples come from the EMA weights...
        for call in epoch_calls:
            np.testing.assert_allclose(
                call["images"],
                expected_images(*ema, call["num_images"], call["seed"]),
                atol=1e-5,
            )
        # ...which differ visibly from the training weights.
        from_train = expected_images(*train, 16, 11)
        assert np.abs(epoch_calls[0]["images"] - from_train).max() > 1e-3
        # The training weights are back after the callbacks.
        for restored, trained in zip(recorder.epoch_ends[epoch], train):
            np.testing.assert_array_equal(restored, trained)

        # The PNG decodes to the expected size and pixels.
        with Image.open(tmp_path / "samples" / f"epoch_{epoch + 1}.png") as png:
            assert png.size == (4 * 8 + 5, 4 * 8 + 5) and png.mode == "L"
            pixels = np.asarray(png)
        tile = expected_images(*ema, 16, 11)[5]  # row 1, column 1
        expected_tile = np.round(tile[..., 0] * 255).astype("uint8")
        expected_tile = expected_tile.repeat(2, axis=0).repeat(2, axis=1)
        top = left = 1 + 1 * (8 + 1)
        np.testing.assert_array_equal(
            pixels[top : top + 8, left : left + 8], expected_tile
        )
        assert pixels[0].max() == 0  # padding

        # val_kid / val_fid from the injected extractor, by hand.
        generated = np.concatenate([c["images"] for c in epoch_calls[1:]])
        f_real = real.reshape(24, -1).astype("float64") @ kernel
        f_gen = generated.reshape(24, -1).astype("float64") @ kernel
        np.testing.assert_allclose(
            history.history["val_kid"][epoch], reference_mmd2(f_real, f_gen), rtol=1e-3
        )
        assert evaluation.history[epoch]["kid"] == history.history["val_kid"][epoch]
    assert len(history.history["val_fid"]) == 2
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val_kid"]) for r in rows] == pytest.approx(
        history.history["val_kid"]
    )
    assert [float(r["val_fid"]) for r in rows] == pytest.approx(
        history.history["val_fid"]
    )
    assert os.path.exists(checkpoint)  # ModelCheckpoint saw val_kid


def test_order_with_swap_ema_weights(tmp_path):
    """Before SwapEMAWeights(swap_on_epoch=True): use_ema=True; after it:
    use_ema=False. Both sample the EMA weights, once each epoch."""
    for use_ema, order in ((True, "before"), (False, "after")):
        model = make_model(momentum=0.6)
        recorder = WeightRecorder()
        grid = callbacks.SampleGrid(
            str(tmp_path / order / "{epoch}.png"),
            num_images=4,
            seed=2,
            use_ema=use_ema,
        )
        swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
        cbs = [recorder, grid, swap] if order == "before" else [recorder, swap, grid]
        model.fit(
            training_images(),
            batch_size=8,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=cbs,
        )
        emas = manual_ema(recorder.batches, 0.6)
        for epoch, call in enumerate(model.generate_calls):
            ema = emas[(epoch + 1) * STEPS_PER_EPOCH - 1]
            np.testing.assert_allclose(
                call["images"],
                expected_images(*ema, 4, 2),
                atol=1e-5,
                err_msg=f"{order}, epoch {epoch}",
            )


def test_ema_weights_context_manager():
    model = make_model(momentum=0.5)
    recorder = WeightRecorder()
    model.fit(
        training_images(),
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    # After `fit`, Keras has copied the EMA weights into the model.
    ema = manual_ema(recorder.batches, 0.5)[-1]
    for w, e in zip(model.dense.weights, ema):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(w), e, atol=1e-6)
    # Give the model other weights; the optimizer still holds the EMA.
    other = [np.full(w.shape, 0.25, "float32") for w in model.dense.weights]
    for w, value in zip(model.dense.weights, other):
        w.assign(value)
    assert callbacks.has_ema_weights(model)
    with callbacks.ema_weights(model) as loaded:
        assert loaded
        for w, e in zip(model.dense.weights, ema):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(w), e, atol=1e-6)
    for w, value in zip(model.dense.weights, other):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), value)
    # Restored on errors too.
    with pytest.raises(RuntimeError), callbacks.ema_weights(model):
        raise RuntimeError("boom")
    for w, value in zip(model.dense.weights, other):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), value)
    # No-ops: disabled, or an optimizer without EMA.
    with callbacks.ema_weights(model, enabled=False) as loaded:
        assert not loaded
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model.dense.weights[1]), other[1]
        )
    plain = make_model(use_ema=False)
    plain.fit(training_images(8), batch_size=8, epochs=1, verbose=0)
    assert not callbacks.has_ema_weights(plain)
    with callbacks.ema_weights(plain) as loaded:
        assert not loaded


def tensorboard_available():
    import importlib.util

    return all(
        importlib.util.find_spec(p) is not None for p in ("tensorflow", "tensorboard")
    )


def test_every_n_epochs_and_tensorboard(tmp_path):
    model = make_model()
    grid = callbacks.SampleGrid(
        str(tmp_path / "g_{epoch:02d}.png"),
        every_n_epochs=2,
        num_images=5,
        tensorboard_log_dir=str(tmp_path / "tb"),
    )
    evaluation = callbacks.GenerativeEvaluation(
        training_images(20, seed=3),
        metrics="kid",
        every_n_epochs=2,
        num_images=12,
        batch_size=12,
        feature_extractor=lambda x: x.reshape(len(x), -1),
        verbose=0,
    )
    fit = lambda: model.fit(  # noqa: E731
        training_images(),
        batch_size=16,
        epochs=3,
        verbose=0,
        callbacks=[grid, evaluation],
    )
    if not tensorboard_available():
        # tf.summary.image lives in the tensorboard package: without it the
        # callback says so once and writes the PNG only.
        with pytest.warns(UserWarning, match="tensorboard"):
            history = fit()
        assert sorted(os.listdir(tmp_path)) == ["g_02.png"]
    else:
        history = fit()
        assert sorted(os.listdir(tmp_path)) == ["g_02.png", "tb"]
    with Image.open(tmp_path / "g_02.png") as png:  # 5 images: 2 rows of 3
        assert png.size == (3 * 4 + 4, 2 * 4 + 3)
    # The skipped epochs log NaN (see test_every_n_epochs_keeps_csv_columns).
    assert len(history.history["val_kid"]) == 3 and list(evaluation.history) == [1]
    assert history.history["val_kid"][1] == evaluation.history[1]["kid"]
    if not tensorboard_available():
        return
    import tensorflow as tf

    events = [os.path.join(tmp_path / "tb", f) for f in os.listdir(tmp_path / "tb")]
    assert events
    values = [
        (value, event.step)
        for path in events
        for event in tf.compat.v1.train.summary_iterator(path)
        for value in event.summary.value
    ]
    assert [(v.tag, step) for v, step in values] == [("samples", 1)]
    # tf.summary.image's format (the image plugin's): [width, height, PNG].
    value = values[0][0]
    assert value.metadata.plugin_data.plugin_name == "images"
    width, height, png = tf.make_ndarray(value.tensor)
    assert (int(width), int(height)) == (16, 11)
    decoded = tf.io.decode_png(png).numpy()
    with Image.open(tmp_path / "g_02.png") as written:
        np.testing.assert_array_equal(decoded[..., 0], np.asarray(written))


def class_conditional_flow(seed=0, num_classes=3):
    """A class-conditional flow-matching model whose labels visibly matter:
    the zero-initialised output layer and the class embedding of the UNet
    are randomised (an untrained UNet predicts 0 for every label)."""
    import keras_immiscible as ki

    keras.utils.set_random_seed(seed)
    network = ki.layers.UNet(
        image_shape=(8, 8, 1),
        widths=(8,),
        block_depth=1,
        embedding_dims=8,
        num_classes=num_classes,
    )
    rng = np.random.default_rng(seed)
    for weight in network.weights:
        value = keras.ops.convert_to_numpy(weight)
        if ("kernel" in weight.path and not value.any()) or (
            "class_embedding" in weight.path
        ):
            weight.assign(0.5 * rng.standard_normal(value.shape))
    return ki.ImmiscibleFlowMatching(
        network, assignment=None, label_dropout=0.1, seed=seed
    )


def test_class_conditional_guided_grid(tmp_path):
    model = class_conditional_flow()
    # No EMA: the weights the callback samples with are the weights after
    # fit, so a direct generate call can reproduce its grid.
    model.compile(optimizer=keras.optimizers.SGD(1e-6))
    labels = np.array([0, 0, 2, 2, 1, 1])
    grid = callbacks.SampleGrid(
        str(tmp_path / "g3_{epoch}.png"),
        num_images=6,
        steps=3,
        seed=5,
        labels=labels,
        guidance_scale=3.0,
        num_rows=3,
        scale=2,
    )
    plain = callbacks.SampleGrid(
        str(tmp_path / "g1_{epoch}.png"),
        num_images=6,
        steps=3,
        seed=5,
        labels=labels,
        num_rows=3,
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(8, 8, 8, 1)).astype("float32")
    model.fit(
        images,
        rng.integers(0, 3, size=8),
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[grid, plain],
    )
    direct = model.generate(
        6, steps=3, seed=5, labels=labels, guidance_scale=3.0, verbose=0
    )
    np.testing.assert_allclose(grid.last_images, direct, atol=1e-5)
    conditional = model.generate(6, steps=3, seed=5, labels=labels, verbose=0)
    np.testing.assert_allclose(plain.last_images, conditional, atol=1e-5)
    # Neither identity is trivial: the scale and the labels change the images.
    assert np.abs(direct - conditional).mean() > 1e-3
    other = model.generate(6, steps=3, seed=5, labels=labels[::-1], verbose=0)
    assert np.abs(other - conditional).mean() > 1e-3
    # The PNG holds those images: 3 rows (one per class pair) of 2 tiles.
    with Image.open(tmp_path / "g3_1.png") as png:
        pixels = np.asarray(png)
    expected = image_utils.make_image_grid(direct, num_rows=3, scale=2)
    assert pixels.shape == expected.shape[:2] == (3 * 16 + 4, 2 * 16 + 3)
    assert np.abs(pixels.astype(int) - expected[..., 0].astype(int)).max() <= 1


def test_sample_grid_config_with_labels_and_guidance():
    import json

    grid = callbacks.SampleGrid(
        "s/{epoch}.png",
        every_n_epochs=2,
        num_images=4,
        steps=7,
        seed=3,
        labels=np.array([5, 5, 9, 9]),
        guidance_scale=2,
        num_rows=2,
        generate_kwargs={"batch_size": 2},
    )
    config = grid.get_config()
    assert config["labels"] == [5, 5, 9, 9] and config["guidance_scale"] == 2.0
    json.dumps(config)  # plain Python values
    again = callbacks.SampleGrid.from_config(config)
    assert again.get_config() == config
    call = again.generate_arguments()
    assert call["labels"].tolist() == [5, 5, 9, 9] and call["labels"].dtype == np.int32
    assert (
        call["guidance_scale"],
        call["steps"],
        call["seed"],
        call["batch_size"],
    ) == (2.0, 7, 3, 2)
    # One int: every image of that class. No labels: generate gets none.
    assert callbacks.SampleGrid("s.png", num_images=3, labels=4).labels == [4, 4, 4]
    assert "labels" not in callbacks.SampleGrid("s.png").generate_arguments()
    with pytest.raises(ValueError, match="one label per image"):
        callbacks.SampleGrid("s.png", num_images=4, labels=[1, 2])
    with pytest.raises(ValueError, match="labels"):
        callbacks.SampleGrid("s.png", num_images=2, labels=[1, -1])
    with pytest.raises(ValueError, match="needs `labels`"):
        callbacks.SampleGrid("s.png", guidance_scale=3.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        callbacks.SampleGrid(
            "s.png", num_images=1, labels=0, guidance_scale=float("nan")
        )
    with pytest.raises(ValueError, match="generate_kwargs"):
        callbacks.SampleGrid("s.png", generate_kwargs={"labels": [0]})


def test_every_n_epochs_keeps_csv_columns(tmp_path):
    # CSVLogger fixes its columns from the first epoch's logs: the epochs
    # GenerativeEvaluation skips must log the keys too (NaN), or the val_
    # columns are lost.
    real = training_images(12, seed=3)
    model = make_model()
    evaluation = callbacks.GenerativeEvaluation(
        real,
        metrics="kid",
        every_n_epochs=2,
        num_images=12,
        batch_size=12,
        feature_extractor=lambda x: x.reshape(len(x), -1),
        subset_size=1000,
        verbose=0,
    )
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        training_images(),
        batch_size=16,
        epochs=4,
        verbose=0,
        callbacks=[evaluation, keras.callbacks.CSVLogger(str(csv_path))],
    )
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert "val_kid" in rows[0] and [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    kids = [float(r["val_kid"]) for r in rows]
    assert np.isnan(kids[0]) and np.isnan(kids[2])
    # The evaluated epochs (1 and 3) hold KID of that epoch's samples, by
    # hand (identity features, both sets whole: one subset).
    assert [c["num_images"] for c in model.generate_calls] == [12, 12]
    flat_real = real.reshape(12, -1).astype("float64")
    for epoch, call in zip((1, 3), model.generate_calls):
        expected = reference_mmd2(
            flat_real, call["images"].reshape(12, -1).astype("float64")
        )
        np.testing.assert_allclose(kids[epoch], expected, rtol=1e-3)
        assert kids[epoch] == evaluation.history[epoch]["kid"]
    assert kids[1] != kids[3]
    np.testing.assert_array_equal(history.history["val_kid"], kids)

    # skipped_value=None: the skipped epochs log nothing (and CSVLogger,
    # fixed at epoch 0, then has no val_kid column).
    evaluation = callbacks.GenerativeEvaluation(
        real,
        metrics="kid",
        every_n_epochs=2,
        num_images=12,
        batch_size=12,
        feature_extractor=lambda x: x.reshape(len(x), -1),
        subset_size=1000,
        verbose=0,
        skipped_value=None,
    )
    history = make_model().fit(
        training_images(),
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[evaluation],
    )
    assert history.history["val_kid"] == [evaluation.history[1]["kid"]]
    with pytest.raises(TypeError, match="skipped_value"):
        callbacks.GenerativeEvaluation(real, skipped_value="nan")


def test_png_grid_writer_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(7, 3, 5, 3)).astype("uint8")
    path = str(tmp_path / "nested" / "grid.png")
    grid = image_utils.save_image_grid(rgb, path, num_rows=2, padding=2, pad_value=9)
    with Image.open(path) as png:
        decoded = np.asarray(png.convert("RGB"))
    assert decoded.shape == (2 * 3 + 3 * 2, 4 * 5 + 5 * 2, 3)
    np.testing.assert_array_equal(decoded, grid)
    np.testing.assert_array_equal(decoded[2:5, 2:7], rgb[0])
    # Image 6 sits in row 1, column 2; the last slot (row 1, column 3) is empty.
    np.testing.assert_array_equal(decoded[7:10, 16:21], rgb[6])
    assert np.all(decoded[7:10, 23:28] == 9) and decoded[0, 0, 0] == 9
    with pytest.raises(ValueError, match="images.*rank 4"):
        image_utils.make_image_grid(rgb[0])
    with pytest.raises(TypeError, match="images"):
        image_utils.make_image_grid(rgb.astype("int32"))


def test_callback_argument_errors():
    with pytest.raises(ValueError, match="path_pattern"):
        callbacks.SampleGrid("samples/{step}.png")
    with pytest.raises(ValueError, match="every_n_epochs"):
        callbacks.SampleGrid("x.png", every_n_epochs=0)
    with pytest.raises(ValueError, match="num_images"):
        callbacks.GenerativeEvaluation(np.zeros((4, 4, 4, 1)), num_images=0)
    with pytest.raises(ValueError, match="metrics"):
        callbacks.GenerativeEvaluation(np.zeros((4, 4, 4, 1)), metrics=["psnr"])


def test_callbacks_with_the_real_diffusion_model(tmp_path):
    """Integration: ImmiscibleDiffusion + SampleGrid + GenerativeEvaluation."""
    from PIL import Image

    import keras_immiscible as ki

    keras.utils.set_random_seed(0)
    images = ki.data.load_digits()[:64]
    net = ki.layers.UNet(
        image_shape=(8, 8, 1), widths=(8,), block_depth=1, embedding_dims=8
    )
    model = ki.ImmiscibleDiffusion(net, assignment="knn", seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True))
    pattern = os.path.join(str(tmp_path), "grid_{epoch:02d}.png")
    flat = lambda x: np.reshape(np.asarray(x, "float32"), (len(x), -1))  # noqa: E731
    kid = metrics.KID(feature_extractor=flat, subset_size=16, num_subsets=4)
    csv_path = os.path.join(str(tmp_path), "log.csv")
    history = model.fit(
        images,
        batch_size=32,
        epochs=2,
        verbose=0,
        callbacks=[
            callbacks.SampleGrid(pattern, num_images=4, steps=2, scale=2),
            callbacks.GenerativeEvaluation(
                images,
                metrics=[kid],
                num_images=16,
                steps=2,
                batch_size=16,
                verbose=0,
            ),
            keras.callbacks.CSVLogger(csv_path),
        ],
    )
    for epoch in (1, 2):
        with Image.open(pattern.format(epoch=epoch)) as png:
            # 2x2 grid of 8x8 tiles, 1-pixel padding, scaled by 2.
            assert png.size[0] == png.size[1] and png.size[0] >= 2 * 2 * 8
    values = history.history["val_kid"]
    assert len(values) == 2 and all(np.isfinite(values))
    with open(csv_path) as f:
        assert "val_kid" in f.readline()
