"""A `tf.data` stage that assigns the noise on the host, ahead of the step.

`with_assigned_noise(dataset)` draws the Gaussian noise of every batch with
numpy and solves its assignment (e.g. the exact scipy linear assignment) in
the input pipeline, so that batch n+1 is assigned while the accelerator
trains on batch n. The model then trains on the given noise and skips its
own assigner. Keras accepts `tf.data` on every backend, so the stage works
with `fit` on TensorFlow, JAX and PyTorch alike.
"""

import keras
import numpy as np

from keras_immiscible import assignment as assignment_lib
from keras_immiscible.utils.arguments import check_int
from keras_immiscible.utils.arguments import check_positive_int

_MAX_SEED = 2**63


def _check_seed(seed):
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    seed = check_int(seed, "seed", minimum=0)
    if seed >= _MAX_SEED:
        raise ValueError(f"`seed` must be a non-negative int below 2**63, got {seed}.")
    return seed


def _check_count(value, name):
    """None, `tf.data.AUTOTUNE` or a positive int."""
    import tensorflow as tf

    if value is None or value == tf.data.AUTOTUNE:
        return value
    return check_positive_int(value, name)


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

    `with_assigned_noise` draws the candidate noise of batch `index` of
    epoch `epoch` (both counted from 0, the epoch as `fit` numbers it) with
    `batch_rng(seed, epoch, index).standard_normal(shape, dtype="float32")`,
    `shape` the assigner's candidate shape (`(batch, ...)` for linear
    assignment, `(batch, k, ...)` for KNN selection).

    Example:

    ```python
    noise = batch_rng(0, epoch=3, index=5).standard_normal(
        (16, 8, 8, 1), dtype="float32"
    )
    ```
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
            gain = assignment_lib.assignment_gain(x, noise, self.assigner.unassigned(c))
            noise = keras.ops.convert_to_numpy(noise).astype(np.float32)
            gain = float(keras.ops.convert_to_numpy(gain))
        gain = np.full((data.shape[0],), gain, dtype=np.float32)
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


def _check_epochs(epochs, initial_epoch):
    initial_epoch = check_int(initial_epoch, "initial_epoch", minimum=0)
    if initial_epoch >= _MAX_SEED:
        raise ValueError(f"`initial_epoch` must be below 2**63, got {initial_epoch}.")
    epochs = check_int(epochs, "epochs", allow_none=True)
    if epochs is not None and not initial_epoch < epochs <= _MAX_SEED:
        raise ValueError(
            "`epochs` (the index of the epoch to stop before, as in "
            "`fit(epochs=...)`) must be greater than `initial_epoch` "
            f"({initial_epoch}), got {epochs!r}."
        )
    return epochs, initial_epoch


def with_assigned_noise(
    dataset,
    assignment="linear",
    seed=None,
    num_parallel_calls=None,
    prefetch=None,
    epochs=None,
    initial_epoch=0,
):
    """Adds host-side noise assignment to a batched image dataset.

    For every batch the stage draws Gaussian candidate noise with numpy from
    a per-batch seed, normalizes the images exactly like
    `ImmiscibleDiffusion` does (float `[0, 1] -> x * 2 - 1`, uint8
    `x / 255 * 2 - 1`), and pairs noise and images with the assigner's own
    `assign(data, candidates)`, on the host (a `tf.data` `map` with
    `tf.numpy_function`, the backend's tensors placed on the CPU). The
    result is prefetched, so the solve for batch n+1 overlaps the training
    step on batch n: with `assignment="linear"` the exact scipy solver costs
    the step nothing as long as it is faster than the step.

    Epochs are part of the returned dataset: it holds the passes over
    `dataset` for the epochs `initial_epoch, initial_epoch + 1, ...` up to
    (not including) `epochs`, one after the other, or forever with
    `epochs=None` (the default). Its element `(e, b)`, batch `b` of epoch
    `e`, always carries the noise of `(seed, e, b)`: the candidates are
    `batch_rng(seed, e, b).standard_normal(...)` (`np.random.SeedSequence(
    [seed, e, b])`), assigned to that element's images. The noise is thus
    a function of the element's position, not of how many times, or by
    whom, the dataset was iterated: Keras opening an extra iterator to look
    at a batch, `take`, thread timing (the map runs in parallel but in
    order) or a second dataset built with the same arguments change
    nothing. Fit it with `steps_per_epoch` equal to the number of batches
    of `dataset`: Keras then keeps one iterator across epochs, so epoch `e`
    of `fit` trains on the noise of epoch `e`. To resume after epoch `k`,
    build the stage with `initial_epoch=k` and call `fit(...,
    initial_epoch=k)`: the noise continues exactly where the uninterrupted
    run would have been (to resume in the middle of epoch `k`, `.skip(b)`
    the returned dataset). The images are `dataset`'s own: each epoch
    iterates `dataset` afresh, so a `shuffle(...,
    reshuffle_each_iteration=True)` in it reshuffles every epoch, as with
    `repeat()`.

    Changed: until this version the stage was one pass of `dataset` and
    counted the iterators opened over it as the epoch, so that
    `fit(ds, epochs=N)` worked without `steps_per_epoch`, but any extra
    iterator (Keras peeking at a batch, `take`, a resumed run) shifted or
    replayed the noise. Now the stage repeats unless `epochs` is given;
    pass `steps_per_epoch` to `fit`.

    Args:
        dataset: a batched `tf.data.Dataset` of `images` or
            `(images, labels)`, images as float in [0, 1] or uint8 in
            [0, 255], shape (batch, ...). A dataset that repeats forever is
            one endless epoch, `initial_epoch`.
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
        epochs: `None` (default: repeat forever) or the epoch to stop
            before, as `fit`'s `epochs`: the dataset then holds
            `epochs - initial_epoch` passes over `dataset` (and knows its
            length when `dataset` does).
        initial_epoch: the first epoch (default 0), as `fit`'s
            `initial_epoch`.

    Returns:
        A `tf.data.Dataset` of dicts: `"images"` (unchanged, same dtype),
        `"noise"` (float32, the images' shape: the assigned noise, in the
        normalized [-1, 1] data space), `"assignment_gain"` (float32 (batch,),
        every entry the batch's `keras_immiscible.assignment.assignment_gain`:
        the relative reduction of the mean image-noise distance, positive
        when the assigned noise is closer), and `"labels"` when the input had
        labels. `ImmiscibleDiffusion.fit` trains on the given noise.

    Example:

    ```python
    import tensorflow as tf
    import keras_immiscible as ki

    images = ki.data.load_digits()
    ds = tf.data.Dataset.from_tensor_slices(images).shuffle(2048).batch(128)
    steps = int(ds.cardinality())
    pipeline = ki.data.with_assigned_noise(ds, assignment="linear", seed=0)
    # The batches bring their noise, so the model needs no assigner of its
    # own (and on TensorFlow its step then compiles with XLA).
    model = ki.ImmiscibleDiffusion(
        ki.layers.UNet(image_shape=(8, 8, 1)), assignment=None
    )
    model.compile(optimizer="adamw")
    model.fit(pipeline, epochs=2, steps_per_epoch=steps)
    # Later, resume at epoch 2 with the noise the run would have had:
    pipeline = ki.data.with_assigned_noise(ds, seed=0, initial_epoch=2)
    model.fit(pipeline, epochs=4, initial_epoch=2, steps_per_epoch=steps)
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
    epochs, initial_epoch = _check_epochs(epochs, initial_epoch)
    if num_parallel_calls is None:
        num_parallel_calls = tf.data.AUTOTUNE
    if prefetch is None:
        prefetch = tf.data.AUTOTUNE
    cardinality = int(dataset.cardinality())
    if cardinality == 0:
        raise ValueError("`dataset` is empty: it has no batch to assign.")
    host = _HostAssigner(assigner, seed)

    # Element (e, b): every epoch is a fresh pass over `dataset`, its
    # batches numbered from 0, tagged with the epoch number e.
    if epochs is None:
        epoch_numbers = tf.data.Dataset.counter(start=initial_epoch)
    else:
        epoch_numbers = tf.data.Dataset.range(initial_epoch, epochs)

    def one_epoch(epoch):
        return dataset.enumerate().map(lambda index, element: (epoch, index, element))

    keyed = epoch_numbers.flat_map(one_epoch)

    def assign(epoch, index, element):
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
    # `flat_map` hides the length from tf.data; restore it, so that Keras
    # knows the size of a finite run (and sees an endless one as such).
    if epochs is None or cardinality == tf.data.INFINITE_CARDINALITY:
        total = tf.data.INFINITE_CARDINALITY
    elif cardinality > 0:
        total = (epochs - initial_epoch) * cardinality
    else:
        total = None
    if total is not None:
        assigned = assigned.apply(tf.data.experimental.assert_cardinality(total))
    return assigned.prefetch(prefetch)
