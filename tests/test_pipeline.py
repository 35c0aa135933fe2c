"""`with_assigned_noise`: the host-side assignment stage of the input pipeline.

Every check recomputes the stage's output independently: the candidate noise
from the documented per-batch numpy seed (seed, epoch, batch), the optimal
permutation with scipy on a float64 cost written out here, the KNN choice and
the distance gain with plain numpy.
"""

import warnings

import keras
import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

import keras_immiscible as ki
from keras_immiscible.data import with_assigned_noise
from keras_immiscible.schedules import CosineSchedule

SHAPE = (8, 8, 1)
BATCH = 16


@pytest.fixture(scope="module")
def digits():
    images, labels = ki.data.load_digits(return_labels=True)
    return images[:40], labels[:40]


def dataset(images, labels=None, batch_size=BATCH):
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(images)
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
    return ds.batch(batch_size)


def to_numpy(element):
    return {key: value.numpy() for key, value in element.items()}


def epoch(ds):
    """Every element of a finite dataset (built with `epochs=`)."""
    assert int(ds.cardinality()) >= 0, "an endless dataset"
    return [to_numpy(element) for element in ds]


def first(ds, count):
    """The first `count` elements of one fresh iterator over `ds`."""
    iterator = iter(ds)
    return [to_numpy(next(iterator)) for _ in range(count)]


def reference_candidates(seed, epoch_index, batch_index, shape):
    """The documented draw: SeedSequence([seed, epoch, batch index])."""
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, epoch_index, batch_index]))
    )
    return rng.standard_normal(shape, dtype=np.float32)


def reference_linear(seed, epoch_index, batch_index, images):
    """The stage's linear-assignment noise for batch (epoch, index), redone.

    numpy draws the candidates from SeedSequence([seed, epoch, index]);
    scipy's `linear_sum_assignment` on the float64 squared-L2 cost between
    the normalized images and the candidates picks the permutation.
    """
    data = images.astype(np.float64) * 2.0 - 1.0
    candidates = reference_candidates(seed, epoch_index, batch_index, images.shape)
    flat_data = data.reshape(len(data), -1)
    flat_cand = candidates.reshape(len(data), -1).astype(np.float64)
    cost = np.sum((flat_data[:, None, :] - flat_cand[None]) ** 2, axis=2)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    np.testing.assert_array_equal(rows, np.arange(len(data)))
    return candidates[cols]


def batches(images):
    return [images[i : i + BATCH] for i in range(0, len(images), BATCH)]


def reference_gain(data, assigned, unassigned):
    def mean_distance(noise):
        diff = (noise - data).reshape(len(data), -1).astype(np.float64)
        return np.mean(np.sqrt(np.sum(diff**2, axis=1)))

    return 1.0 - mean_distance(assigned) / mean_distance(unassigned)


def test_linear_noise_is_the_optimal_permutation(digits):
    images, _ = digits
    out = epoch(with_assigned_noise(dataset(images), "linear", seed=5, epochs=1))
    assert [len(b["images"]) for b in out] == [16, 16, 8]
    assigner = ki.assignment.LinearAssignment()
    for i, batch in enumerate(out):
        x = images[i * BATCH : (i + 1) * BATCH]
        np.testing.assert_array_equal(batch["images"], x)
        data = x * 2.0 - 1.0
        candidates = reference_candidates(5, 0, i, x.shape)
        noise = batch["noise"]
        assert noise.dtype == np.float32 and noise.shape == x.shape

        # A permutation of the candidates ...
        flat_noise = noise.reshape(len(x), -1)
        flat_cand = candidates.reshape(len(x), -1)
        match = np.all(flat_noise[:, None, :] == flat_cand[None, :, :], axis=2)
        assert np.all(match.sum(axis=1) == 1)
        columns = np.argmax(match, axis=1)
        assert sorted(columns) == list(range(len(x)))
        # ... the one an independent float64 solve of the squared-L2 cost
        # picks ...
        flat_data = data.reshape(len(x), -1).astype(np.float64)
        cost = np.sum(
            (flat_data[:, None, :] - flat_cand[None].astype(np.float64)) ** 2,
            axis=2,
        )
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        np.testing.assert_array_equal(columns[rows], cols)
        # ... and exactly what the assigner's own assign() gives.
        own = keras.ops.convert_to_numpy(assigner.assign(data, candidates))
        np.testing.assert_array_equal(noise, own)

        gain = batch["assignment_gain"]
        assert gain.dtype == np.float32 and gain.shape == (len(x),)
        expected = reference_gain(data, noise, candidates)
        assert expected > 0.0
        np.testing.assert_allclose(gain, expected, rtol=1e-4)


def test_knn_keeps_the_nearest_candidate(digits):
    images, _ = digits
    out = epoch(with_assigned_noise(dataset(images), "knn", seed=2, epochs=1))
    k = ki.assignment.KNNSelection().k
    for i, batch in enumerate(out):
        x = images[i * BATCH : (i + 1) * BATCH]
        data = (x * 2.0 - 1.0).astype(np.float64)
        candidates = reference_candidates(2, 0, i, (len(x), k) + SHAPE)
        distances = np.sum((candidates - data[:, None]) ** 2, axis=(2, 3, 4))
        nearest = candidates[np.arange(len(x)), np.argmin(distances, axis=1)]
        np.testing.assert_array_equal(batch["noise"], nearest)
        expected = reference_gain(data, nearest, candidates[:, 0])
        np.testing.assert_allclose(batch["assignment_gain"], expected, rtol=1e-4)


def test_no_assignment_passes_the_draw_through(digits):
    images, _ = digits
    out = epoch(with_assigned_noise(dataset(images), None, seed=4, epochs=1))
    for i, batch in enumerate(out):
        shape = (len(batch["images"]),) + SHAPE
        np.testing.assert_array_equal(
            batch["noise"], reference_candidates(4, 0, i, shape)
        )
        np.testing.assert_array_equal(batch["assignment_gain"], 0.0)


def test_uint8_images_and_labels(digits):
    images, labels = digits
    images = np.round(images * 255).astype(np.uint8)
    ds = with_assigned_noise(dataset(images, labels), "linear", seed=9, epochs=1)
    assert set(ds.element_spec) == {"images", "labels", "noise", "assignment_gain"}
    assigner = ki.assignment.LinearAssignment()
    for i, batch in enumerate(epoch(ds)):
        x = images[i * BATCH : (i + 1) * BATCH]
        assert batch["images"].dtype == np.uint8
        np.testing.assert_array_equal(batch["images"], x)
        np.testing.assert_array_equal(
            batch["labels"], labels[i * BATCH : (i + 1) * BATCH]
        )
        data = x.astype(np.float32) / 255.0 * 2.0 - 1.0
        candidates = reference_candidates(9, 0, i, x.shape)
        own = keras.ops.convert_to_numpy(assigner.assign(data, candidates))
        np.testing.assert_array_equal(batch["noise"], own)


def test_noise_of_every_epoch_and_batch_is_pinned(digits):
    images, _ = digits
    ds = with_assigned_noise(dataset(images), "linear", seed=1, epochs=3)
    out = epoch(ds)
    assert len(out) == 9
    for e in range(3):
        for b, x in enumerate(batches(images)):
            element = out[3 * e + b]
            np.testing.assert_array_equal(element["images"], x)
            np.testing.assert_array_equal(
                element["noise"], reference_linear(1, e, b, x)
            )
    # Every epoch draws fresh noise, and so does another seed.
    assert not np.allclose(out[0]["noise"], out[3]["noise"])
    other = first(with_assigned_noise(dataset(images), "linear", seed=2), 1)
    assert not np.allclose(out[0]["noise"], other[0]["noise"])
    # Parallelism and prefetching change nothing.
    parallel = epoch(
        with_assigned_noise(
            dataset(images),
            "linear",
            seed=1,
            epochs=3,
            num_parallel_calls=3,
            prefetch=1,
        )
    )
    for a, b in zip(out, parallel):
        np.testing.assert_array_equal(a["noise"], b["noise"])
        np.testing.assert_array_equal(a["assignment_gain"], b["assignment_gain"])


def test_noise_does_not_depend_on_how_the_dataset_is_iterated(digits):
    # The old stage counted iterators as epochs: a look at one batch (as
    # Keras takes before training) or a `take` moved every later pass on.
    images, _ = digits
    ds = with_assigned_noise(dataset(images), "linear", seed=3)
    assert int(ds.cardinality()) == tf.data.INFINITE_CARDINALITY
    for _ in range(2):
        next(iter(ds))
    list(ds.take(2))
    # Epoch after epoch in one iterator: element (e, b) has the noise of
    # (seed, e, b).
    out = first(ds, 7)
    xs = batches(images)
    for n, element in enumerate(out):
        e, b = divmod(n, 3)
        np.testing.assert_array_equal(element["images"], xs[b])
        np.testing.assert_array_equal(
            element["noise"], reference_linear(3, e, b, xs[b])
        )
    # Skipping into the run (a resume in the middle of epoch 1) and
    # starting at a later epoch land on the same elements.
    np.testing.assert_array_equal(first(ds.skip(4), 1)[0]["noise"], out[4]["noise"])
    later = epoch(
        with_assigned_noise(
            dataset(images), "linear", seed=3, epochs=3, initial_epoch=1
        )
    )
    assert len(later) == 6
    for a, b in zip(later, out[3:]):
        np.testing.assert_array_equal(a["noise"], b["noise"])


def test_seed_none_draws_a_random_seed(digits):
    images, _ = digits
    a = first(with_assigned_noise(dataset(images), seed=None), 1)
    b = first(with_assigned_noise(dataset(images), seed=None), 1)
    assert not np.allclose(a[0]["noise"], b[0]["noise"])


def test_bad_arguments_get_clear_errors(digits):
    images, _ = digits
    ds = dataset(images)
    with pytest.raises(TypeError, match="dataset"):
        with_assigned_noise(images)
    with pytest.raises(ValueError, match="batch"):
        with_assigned_noise(tf.data.Dataset.from_tensor_slices(images[:, 0, 0, 0]))
    with pytest.raises(TypeError, match="uint8"):
        with_assigned_noise(ds.map(lambda x: tf.cast(x, tf.int32)))
    with pytest.raises(ValueError, match="images"):
        with_assigned_noise(ds.map(lambda x: (x, x, x)))
    with pytest.raises(ValueError, match="seed"):
        with_assigned_noise(ds, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        with_assigned_noise(ds, seed=1.5)
    with pytest.raises(ValueError, match="num_parallel_calls"):
        with_assigned_noise(ds, num_parallel_calls=0)
    with pytest.raises(ValueError, match="epochs"):
        with_assigned_noise(ds, epochs=2, initial_epoch=2)
    with pytest.raises(TypeError, match="epochs"):
        with_assigned_noise(ds, epochs=2.0)
    with pytest.raises(ValueError, match="initial_epoch"):
        with_assigned_noise(ds, initial_epoch=-1)
    with pytest.raises(ValueError, match="empty"):
        with_assigned_noise(ds.take(0))
    with pytest.raises(ValueError, match="Unknown assignment"):
        with_assigned_noise(ds, assignment="hungarian")
    bad = images.copy()
    bad[3, 2, 2, 0] = np.nan
    with pytest.raises(Exception, match="NaN"):
        epoch(with_assigned_noise(dataset(bad), seed=0, epochs=1))


class FixedTime(CosineSchedule):
    def sample_times(self, batch_size, seed=None):
        return keras.ops.full((batch_size,), 0.3, "float32")


@keras.saving.register_keras_serializable(package="test_pipeline")
class Scale(keras.layers.Layer):
    """`scale * x` with one trainable scalar."""

    def build(self, input_shape):
        self.scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(0.5)
        )

    def call(self, x):
        return self.scale * x


def scale_network():
    noisy = keras.Input(SHAPE)
    level = keras.Input((1, 1, 1))
    out = Scale()(noisy)
    out = keras.layers.Add()([out, keras.layers.Rescaling(0.0)(level)])
    return keras.Model([noisy, level], out)


def hand_losses(images, seed, epochs, initial_epoch=0):
    """Per-epoch logged loss and gain of the fixed `scale_network` model.

    With a zero learning rate the network stays `0.5 * noisy`, so the loss
    of a batch is `mean((0.5 * (a x + s n) - n)^2)` for its reference noise
    n; Keras logs the batch-size weighted mean over the epoch, and the
    assignment gain as the mean of the batches' gains.
    """
    a, s = (float(keras.ops.convert_to_numpy(r)) for r in FixedTime()(0.3))
    losses, gains = [], []
    for e in range(initial_epoch, epochs):
        per_batch, sizes, per_gain = [], [], []
        for b, x in enumerate(batches(images)):
            data = x.astype(np.float64) * 2.0 - 1.0
            noise = reference_linear(seed, e, b, x).astype(np.float64)
            per_batch.append(np.mean((0.5 * (a * data + s * noise) - noise) ** 2))
            sizes.append(len(x))
            per_gain.append(
                reference_gain(data, noise, reference_candidates(seed, e, b, x.shape))
            )
        losses.append(np.average(per_batch, weights=sizes))
        gains.append(np.mean(per_gain))
    return np.array(losses), np.array(gains)


def fixed_model():
    model = ki.ImmiscibleDiffusion(
        scale_network(), schedule=FixedTime(), assignment=None, seed=0
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    return model


def test_fit_epochs_line_up_with_the_noise_epochs_and_resume(digits):
    images, _ = digits
    steps = int(dataset(images).cardinality())
    history = fixed_model().fit(
        with_assigned_noise(dataset(images), "linear", seed=7),
        epochs=3,
        steps_per_epoch=steps,
        verbose=0,
    )
    losses, gains = hand_losses(images, seed=7, epochs=3)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)
    np.testing.assert_allclose(history.history["assignment_gain"], gains, rtol=1e-4)
    # A run resumed at epoch 1 (a fresh model, a fresh pipeline started at
    # epoch 1) trains on the noise the uninterrupted run had there.
    resumed = fixed_model().fit(
        with_assigned_noise(dataset(images), "linear", seed=7, initial_epoch=1),
        epochs=3,
        initial_epoch=1,
        steps_per_epoch=steps,
        verbose=0,
    )
    np.testing.assert_allclose(resumed.history["loss"], losses[1:], rtol=1e-5)
    # A finite run of the same epochs fits without `steps_per_epoch`
    # when it is one epoch long, and knows its length.
    finite = with_assigned_noise(dataset(images), "linear", seed=7, epochs=1)
    assert int(finite.cardinality()) == steps
    history = fixed_model().fit(finite, epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["loss"], losses[:1], rtol=1e-5)
    assert (
        int(
            with_assigned_noise(
                dataset(images), seed=7, epochs=4, initial_epoch=1
            ).cardinality()
        )
        == 3 * steps
    )


def test_a_network_learns_from_the_pipeline_noise(digits):
    images, _ = digits
    keras.utils.set_random_seed(0)
    noisy = keras.Input(SHAPE)
    level = keras.Input((1, 1, 1))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(
        keras.layers.Concatenate()([noisy, level * keras.ops.ones_like(noisy)])
    )
    net = keras.Model([noisy, level], keras.layers.Conv2D(1, 1)(hidden))
    model = ki.ImmiscibleDiffusion(net, assignment=None, seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    before = [keras.ops.convert_to_numpy(w) for w in net.trainable_weights]
    history = model.fit(
        with_assigned_noise(dataset(images), seed=0),
        epochs=3,
        steps_per_epoch=3,
        verbose=0,
    )
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert min(history.history["assignment_gain"]) > 0.01
    after = [keras.ops.convert_to_numpy(w) for w in net.trainable_weights]
    assert any(not np.allclose(b, c) for b, c in zip(before, after))


def test_pipeline_noise_needs_no_host_assigner_in_the_model(digits):
    # The model keeps its default host assigner (LinearAssignment with
    # scipy); the pipeline brings the noise, so the step never calls that
    # assigner: no warning about it, and on TensorFlow the step compiles
    # with XLA when asked to.
    images, _ = digits
    steps = int(dataset(images).cardinality())
    model = ki.ImmiscibleDiffusion(scale_network(), schedule=FixedTime(), seed=0)
    assert model.assigner.on_host
    jit = keras.backend.backend() == "tensorflow"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=jit)
        history = model.fit(
            with_assigned_noise(dataset(images), "linear", seed=7),
            epochs=2,
            steps_per_epoch=steps,
            verbose=0,
        )
    host = [str(w.message) for w in caught if "host" in str(w.message)]
    assert not host, host
    if jit:
        assert model.jit_compile is True
    losses, _ = hand_losses(images, seed=7, epochs=2)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)
    # Data without noise still gets the model's assigner, and on
    # TensorFlow its warning and a step without XLA.
    model = ki.ImmiscibleDiffusion(scale_network(), schedule=FixedTime(), seed=0)
    if jit:
        with pytest.warns(UserWarning, match="host"):
            model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=True)
            model.fit(dataset(images), epochs=1, verbose=0)
        assert model.jit_compile is False
