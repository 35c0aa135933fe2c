"""`with_assigned_noise`: the host-side assignment stage of the input pipeline.

Every check recomputes the stage's output independently: the candidate noise
from the documented per-batch numpy seed, the optimal permutation with scipy
on a float64 cost written out here, the KNN choice and the distance gain with
plain numpy.
"""

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
    return [to_numpy(element) for element in ds]


def reference_candidates(seed, epoch_index, batch_index, shape):
    """The documented draw: SeedSequence([seed, epoch, batch index])."""
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, epoch_index, batch_index]))
    )
    return rng.standard_normal(shape, dtype=np.float32)


def reference_gain(data, assigned, unassigned):
    def mean_distance(noise):
        diff = (noise - data).reshape(len(data), -1).astype(np.float64)
        return np.mean(np.sqrt(np.sum(diff**2, axis=1)))

    return 1.0 - mean_distance(assigned) / mean_distance(unassigned)


def test_linear_noise_is_the_optimal_permutation(digits):
    images, _ = digits
    out = epoch(with_assigned_noise(dataset(images), "linear", seed=5))
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
    out = epoch(with_assigned_noise(dataset(images), "knn", seed=2))
    k = ki.assignment.KNNSelection().k
    for i, batch in enumerate(out):
        x = images[i * BATCH : (i + 1) * BATCH]
        data = (x * 2.0 - 1.0).astype(np.float64)
        candidates = reference_candidates(2, 0, i, (len(x), k) + SHAPE)
        distances = np.sum(
            (candidates - data[:, None]) ** 2, axis=(2, 3, 4)
        )
        nearest = candidates[np.arange(len(x)), np.argmin(distances, axis=1)]
        np.testing.assert_array_equal(batch["noise"], nearest)
        expected = reference_gain(data, nearest, candidates[:, 0])
        np.testing.assert_allclose(batch["assignment_gain"], expected,
                                   rtol=1e-4)


def test_no_assignment_passes_the_draw_through(digits):
    images, _ = digits
    out = epoch(with_assigned_noise(dataset(images), None, seed=4))
    for i, batch in enumerate(out):
        shape = (len(batch["images"]),) + SHAPE
        np.testing.assert_array_equal(
            batch["noise"], reference_candidates(4, 0, i, shape)
        )
        np.testing.assert_array_equal(batch["assignment_gain"], 0.0)


def test_uint8_images_and_labels(digits):
    images, labels = digits
    images = np.round(images * 255).astype(np.uint8)
    ds = with_assigned_noise(dataset(images, labels), "linear", seed=9)
    assert set(ds.element_spec) == {
        "images", "labels", "noise", "assignment_gain"
    }
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


def test_same_seed_same_noise_every_epoch_fresh_noise(digits):
    images, _ = digits
    first = with_assigned_noise(dataset(images), "linear", seed=1)
    second = with_assigned_noise(
        dataset(images), "linear", seed=1, num_parallel_calls=3, prefetch=1
    )
    a0, a1 = epoch(first), epoch(first)
    b0, b1 = epoch(second), epoch(second)
    for a, b in zip(a0 + a1, b0 + b1):
        np.testing.assert_array_equal(a["noise"], b["noise"])
        np.testing.assert_array_equal(a["assignment_gain"],
                                      b["assignment_gain"])
    # The second pass draws fresh noise: epoch 1 of the documented seeds.
    assert not np.allclose(a0[0]["noise"], a1[0]["noise"])
    columns_free = np.sort(a1[0]["noise"].reshape(BATCH, -1), axis=0)
    expected = reference_candidates(1, 1, 0, (BATCH,) + SHAPE)
    np.testing.assert_array_equal(
        columns_free, np.sort(expected.reshape(BATCH, -1), axis=0)
    )
    other = epoch(with_assigned_noise(dataset(images), "linear", seed=2))
    assert not np.allclose(a0[0]["noise"], other[0]["noise"])


def test_seed_none_draws_a_random_seed(digits):
    images, _ = digits
    a = epoch(with_assigned_noise(dataset(images), seed=None))
    b = epoch(with_assigned_noise(dataset(images), seed=None))
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
    with pytest.raises(ValueError, match="Unknown assignment"):
        with_assigned_noise(ds, assignment="hungarian")
    bad = images.copy()
    bad[3, 2, 2, 0] = np.nan
    with pytest.raises(Exception, match="NaN"):
        epoch(with_assigned_noise(dataset(bad), seed=0))


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


def test_fit_trains_on_the_given_noise(digits):
    images, _ = digits
    ds = dataset(images)
    model = ki.ImmiscibleDiffusion(
        scale_network(), schedule=FixedTime(), assignment=None, seed=0
    )
    # A zero learning rate keeps the network fixed, so the logged loss is
    # the mean of the two batches' losses written out by hand.
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    history = model.fit(
        with_assigned_noise(ds, "linear", seed=7),
        epochs=1, steps_per_epoch=2, verbose=0,
    )
    # Keras may open an iterator over the dataset before training (to look
    # at a batch), and every pass draws fresh noise: the fit saw the first
    # two batches of one of the first passes, exactly.
    reference = with_assigned_noise(ds, "linear", seed=7)
    a, s = (float(keras.ops.convert_to_numpy(r)) for r in FixedTime()(0.3))
    matches = []
    for _ in range(3):
        losses, gains = [], []
        for batch in epoch(reference)[:2]:
            data = batch["images"].astype(np.float64) * 2.0 - 1.0
            noise = batch["noise"].astype(np.float64)
            noisy = a * data + s * noise
            losses.append(np.mean((0.5 * noisy - noise) ** 2))
            gains.append(batch["assignment_gain"][0])
        matches.append(
            np.isclose(history.history["loss"][0], np.mean(losses), rtol=1e-5)
            and np.isclose(
                history.history["assignment_gain"][0], np.mean(gains),
                rtol=1e-5,
            )
        )
    assert sum(matches) == 1, (history.history, matches)

    # And a (small, quick to compile) convolutional network learns from it.
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
        with_assigned_noise(ds.repeat(), seed=0), epochs=3, steps_per_epoch=3,
        verbose=0,
    )
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert min(history.history["assignment_gain"]) > 0.01
    after = [keras.ops.convert_to_numpy(w) for w in net.trainable_weights]
    assert any(not np.allclose(b, c) for b, c in zip(before, after))


def test_the_stage_keeps_the_epoch_length(digits):
    images, _ = digits
    ds = dataset(images)
    assigned = with_assigned_noise(ds, "linear", seed=3)
    assert int(assigned.cardinality()) == int(ds.cardinality()) > 1
    # Keras sees the epoch's length: a full-epoch fit logs the mean of its
    # batches' losses (with an unknown length it averaged in one extra,
    # empty step on TensorFlow).
    model = ki.ImmiscibleDiffusion(
        scale_network(), schedule=FixedTime(), assignment=None, seed=0
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    history = model.fit(assigned, epochs=1, verbose=0)
    a, s = (float(keras.ops.convert_to_numpy(r)) for r in FixedTime()(0.3))
    reference = with_assigned_noise(ds, "linear", seed=3)
    candidates = []
    for _ in range(3):
        losses, sizes = [], []
        for batch in epoch(reference):
            data = batch["images"].astype(np.float64) * 2.0 - 1.0
            noise = batch["noise"].astype(np.float64)
            losses.append(np.mean((0.5 * (a * data + s * noise) - noise) ** 2))
            sizes.append(len(data))
        # Keras weighs each batch's loss by its size (the last is partial).
        candidates.append(np.average(losses, weights=sizes))
    assert np.any(np.isclose(history.history["loss"][0], candidates,
                             rtol=1e-5)), (history.history, candidates)
