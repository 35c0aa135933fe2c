"""A `tf.data` stage that assigns the noise on the host, ahead of the step.

`with_assigned_noise(dataset)` draws the Gaussian noise of every batch with
numpy and solves its assignment (e.g. the exact scipy linear assignment) in
the input pipeline, so that batch n+1 is assigned while the accelerator
trains on batch n. The model then trains on the given noise and skips its
own assigner. Keras accepts `tf.data` on every backend, so the stage works
with `fit` on TensorFlow, JAX and PyTorch alike.
"""

import numbers

import keras
import numpy as np

from keras_immiscible import assignment as assignment_lib

_MAX_SEED = 2**63


def _check_seed(seed):
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"`seed` must be None or a non-negative integer, got {seed!r}."
        )
    if not 0 <= int(seed) < _MAX_SEED:
        raise ValueError(
            f"`seed` must be a non-negative integer below 2**63, got {seed!r}."
        )
    return int(seed)


def _check_count(value, name):
    import tensorflow as tf

    if value is None or value == tf.data.AUTOTUNE:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be None, tf.data.AUTOTUNE or a positive integer, "
            f"got {value!r}."
        )
    if value < 1:
        raise ValueError(
            f"`{name}` must be None, tf.data.AUTOTUNE or a positive integer, "
            f"got {value!r}."
        )
    return int(value)


def normalize_images(images):
    """Maps a numpy batch to float32 in [-1, 1], as the model does.

    Float images in [0, 1] become `x * 2 - 1`; uint8 images in [0, 255]
    become `x / 255 * 2 - 1`.
    """
    images = np.asarray(images)
    data = images.astype(np.float32)
    if images.dtype == np.uint8:
        data = data / np.float32(255.0)
    return data * np.float32(2.0) - np.float32(1.0)


def batch_rng(seed, epoch, index):
    """The numpy generator of one batch, from (seed, epoch, batch index).

    `with_assigned_noise` draws the candidate noise of batch `index` of the
    `epoch`-th pass over the dataset (both counted from 0) with
    `batch_rng(seed, epoch, index).standard_normal(shape, dtype="float32")`.
    """
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), int(epoch), int(index)])
    )


def _candidate_shape(assigner, batch_shape):
    """Shape of the assigner's candidate draw for a batch of `batch_shape`.

    Asks the assigner itself (on a one-sample batch, so it is cheap): one
    noise per sample for `LinearAssignment`/`RandomNoise`, `k` per sample
    for `KNNSelection`, and whatever a custom assigner's `draw` returns, as
    long as its first axis is the batch axis.
    """
    with keras.device("cpu:0"):
        probe = keras.ops.zeros((1,) + tuple(batch_shape[1:]), "float32")
        shape = tuple(keras.ops.shape(assigner.draw(probe, seed=0)))
    if shape[0] != 1:
        raise ValueError(
            f"{assigner!r} draws candidates of shape {shape} for one sample; "
            "with_assigned_noise needs the batch on the first axis."
        )
    return (int(batch_shape[0]),) + tuple(int(d) for d in shape[1:])


class _HostAssigner:
    """The numpy function of the stage: noise, assignment and gain."""

    def __init__(self, assigner, seed):
        self.assigner = assigner
        self.seed = seed
        self._shapes = {}

    def candidates(self, epoch, index, batch_shape):
        key = tuple(batch_shape)
        if key not in self._shapes:
            self._shapes[key] = _candidate_shape(self.assigner, key)
        return batch_rng(self.seed, epoch, index).standard_normal(
            self._shapes[key], dtype=np.float32
        )

    def __call__(self, epoch, index, images):
        images = np.asarray(images)
        data = normalize_images(images)
        if not np.all(np.isfinite(data)):
            bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            raise ValueError(
                f"with_assigned_noise: a batch of `images` contains {bad} NaN "
                "or infinite value(s); its assignment is undefined."
            )
        candidates = self.candidates(epoch, index, data.shape)
        # The assigner's own keras.ops code, kept on the host: this runs in a
        # tf.data thread while the accelerator trains on the previous batch.
        with keras.device("cpu:0"):
            x = keras.ops.convert_to_tensor(data)
            c = keras.ops.convert_to_tensor(candidates)
            noise = self.assigner.assign(x, c)
            change = assignment_lib.distance_change(
                x, noise, self.assigner.unassigned(c)
            )
            noise = keras.ops.convert_to_numpy(noise).astype(np.float32)
            change = float(keras.ops.convert_to_numpy(change))
        gain = np.full((data.shape[0],), -change, dtype=np.float32)
        return noise, gain


def _split_element(spec):
    """Checks the element spec; returns `(image_spec, has_labels)`."""
    import tensorflow as tf

    if isinstance(spec, tf.TensorSpec):
        return spec, False
    if isinstance(spec, tuple) and len(spec) == 2:
        if all(isinstance(s, tf.TensorSpec) for s in spec):
            return spec[0], True
    raise ValueError(
        "`dataset` must yield batches of `images` or `(images, labels)`, got "
        f"elements {spec}."
    )


def with_assigned_noise(
    dataset,
    assignment="linear",
    seed=None,
    num_parallel_calls=None,
    prefetch=None,
):
    """Adds host-side noise assignment to a batched image dataset.

    For every batch the stage draws Gaussian candidate noise with numpy from
    a per-batch seed, normalizes the images exactly like
    `ImmiscibleDiffusion` does (float `[0, 1] -> x * 2 - 1`, uint8
    `x / 255 * 2 - 1`), and pairs noise and images with the assigner's own
    `assign(data, candidates)`, on the host (`tf.numpy_function`, with the
    backend's tensors placed on the CPU). The result is prefetched, so the
    solve for batch n+1 overlaps the training step on batch n: with
    `assignment="linear"` the exact scipy solver costs the step nothing as
    long as it is faster than the step.

    Reproducibility: the noise of batch `i` of the `e`-th pass over the
    returned dataset (both counted from 0) comes from
    `np.random.SeedSequence([seed, e, i])` (see `batch_rng`), so it does not
    depend on thread timing (the map runs in parallel but in order), and
    every epoch gets fresh noise. Two datasets built with the same seed
    yield the same batches, epoch after epoch.

    Args:
        dataset: a batched `tf.data.Dataset` of `images` or
            `(images, labels)`, images as float in [0, 1] or uint8 in
            [0, 255], shape (batch, ...).
        assignment: the assigner: `"linear"` (exact `LinearAssignment()` with
            scipy, the default), `"knn"`, `None`, a config dict or a
            `keras_immiscible.assignment.NoiseAssigner`
            (see `keras_immiscible.assignment.get`).
        seed: non-negative int seed of the noise; `None` picks one at random
            (then two datasets differ).
        num_parallel_calls: batches assigned concurrently (`tf.data`'s
            `num_parallel_calls`); default `tf.data.AUTOTUNE`.
        prefetch: batches kept ready ahead of the training step; default
            `tf.data.AUTOTUNE`.

    Returns:
        A `tf.data.Dataset` of dicts: `"images"` (unchanged, same dtype),
        `"noise"` (float32, the images' shape: the assigned noise, in the
        normalized [-1, 1] data space), `"assignment_gain"` (float32 (batch,),
        every entry the batch's `-distance_change`: the relative reduction
        of the mean image-noise distance), and `"labels"` when the input had
        labels. `ImmiscibleDiffusion.fit` trains on the given noise.

    Example:

    ```python
    import tensorflow as tf
    import keras_immiscible as ki

    images = ki.data.load_digits()
    ds = tf.data.Dataset.from_tensor_slices(images).shuffle(2048).batch(128)
    ds = ki.data.with_assigned_noise(ds, assignment="linear", seed=0)
    # The batches bring their noise, so the model needs no assigner of its
    # own (and on TensorFlow its step then compiles with XLA).
    model = ki.ImmiscibleDiffusion(
        ki.layers.UNet(image_shape=(8, 8, 1)), assignment=None
    )
    model.compile(optimizer="adamw")
    model.fit(ds, epochs=2)
    ```
    """
    import tensorflow as tf

    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            "`dataset` must be a batched tf.data.Dataset of images or "
            f"(images, labels), got {type(dataset).__name__}."
        )
    image_spec, has_labels = _split_element(dataset.element_spec)
    dtype = image_spec.dtype
    if dtype != tf.uint8 and not dtype.is_floating:
        raise TypeError(
            "`dataset` must hold images as float in [0, 1] or uint8 in "
            f"[0, 255], got dtype {dtype.name}."
        )
    shape = image_spec.shape
    if shape.rank is None or shape.rank < 2:
        raise ValueError(
            "`dataset` must yield batches (batch, ...) of images, got image "
            f"shape {shape}. (Did you forget to .batch() it?)"
        )
    if any(d is None for d in shape[1:]):
        raise ValueError(
            "`dataset` must yield images of a fully defined shape (batch, "
            f"...), got {shape}."
        )
    assigner = assignment_lib.get(assignment)
    seed = _check_seed(seed)
    num_parallel_calls = _check_count(num_parallel_calls, "num_parallel_calls")
    prefetch = _check_count(prefetch, "prefetch")
    if num_parallel_calls is None:
        num_parallel_calls = tf.data.AUTOTUNE
    if prefetch is None:
        prefetch = tf.data.AUTOTUNE
    host = _HostAssigner(assigner, seed)

    # The epoch number: `from_generator` calls its generator once per pass
    # over the dataset, so each pass reads the next count, repeated for all
    # of its batches.
    passes = iter(range(_MAX_SEED))
    epoch = tf.data.Dataset.from_generator(
        lambda: iter([next(passes)]),
        output_signature=tf.TensorSpec((), tf.int64),
    ).flat_map(lambda e: tf.data.Dataset.from_tensors(e).repeat())
    keyed = tf.data.Dataset.zip((epoch, dataset.enumerate()))

    def assign(epoch, indexed):
        index, element = indexed
        images = element[0] if has_labels else element
        noise, gain = tf.numpy_function(
            host,
            [epoch, index, images],
            Tout=(tf.float32, tf.float32),
            stateful=False,
            name="assign_noise",
        )
        noise.set_shape(images.shape)
        gain.set_shape(images.shape[:1])
        out = {"images": images, "noise": noise, "assignment_gain": gain}
        if has_labels:
            out["labels"] = element[1]
        return out

    assigned = keyed.map(
        assign, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    # Zipping with the (generator-made) epoch counter hides the input's
    # length from tf.data; restore it so that `fit` knows the epoch's size
    # (otherwise Keras logs the first epoch over one step too many).
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        assigned = assigned.apply(
            tf.data.experimental.assert_cardinality(cardinality)
        )
    return assigned.prefetch(prefetch)
