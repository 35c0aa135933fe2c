"""Encoding an image dataset once: `encode_dataset`."""

import os

import keras
import numpy as np

from keras_immiscible.latent.autoencoder import Autoencoder
from keras_immiscible.utils import arguments

CACHE_VERSION = 1


def _is_tf_dataset(x):
    if "tensorflow" not in type(x).__module__:
        return False
    import tensorflow as tf

    return isinstance(x, tf.data.Dataset)


def _split_element(element, where):
    """(images, labels or None) of one dataset element."""
    if isinstance(element, dict):
        if "images" not in element:
            raise ValueError(
                f"{where}: dict elements must hold 'images' (and optionally "
                f"'labels'), got keys {sorted(element)}."
            )
        return element["images"], element.get("labels")
    if isinstance(element, (tuple, list)):
        if len(element) == 1:
            return element[0], None
        if len(element) == 2:
            return element[0], element[1]
        raise ValueError(
            f"{where}: elements must be images or (images, labels), got a "
            f"tuple of {len(element)}."
        )
    return element, None


def _array_batches(images, labels, batch_size):
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(
            "encode_dataset: `dataset` must be images (N, height, width, "
            f"channels) or (images, labels), got shape {images.shape}."
        )
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(images):
            raise ValueError(
                f"encode_dataset: {len(images)} images but {len(labels)} labels."
            )
    n = len(images)
    batches = (
        (
            images[i : i + batch_size],
            None if labels is None else labels[i : i + batch_size],
        )
        for i in range(0, n, batch_size)
    )
    return batches, -(-n // batch_size), n, labels is not None


def _tf_batches(dataset, batch_size, image_rank):
    import tensorflow as tf

    cardinality = int(dataset.cardinality())
    if cardinality == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            "encode_dataset: the tf.data dataset repeats forever; pass a "
            "finite one (without `.repeat()`, or with `.take(n)`)."
        )
    spec, label_spec = _split_element(dataset.element_spec, "encode_dataset")
    rank = spec.shape.rank
    num_images = None
    if rank == image_rank:  # unbatched: batch it
        if cardinality >= 0:
            num_images = cardinality
        dataset = dataset.batch(batch_size)
        cardinality = int(dataset.cardinality())
    elif rank != image_rank + 1:
        raise ValueError(
            "encode_dataset: the dataset's images must have shape "
            f"(height, width, channels) or (batch, height, width, "
            f"channels), got {spec.shape}."
        )
    num_batches = cardinality if cardinality >= 0 else None

    def batches():
        for element in dataset.as_numpy_iterator():
            yield _split_element(element, "encode_dataset")

    return batches(), num_batches, num_images, label_spec is not None


def _check_cache(data, path, autoencoder, num_images, has_labels, sample, seed):
    def stale(reason):
        raise ValueError(
            f"encode_dataset: the cache {path!r} does not match this call "
            f"({reason}). Delete it or pass `overwrite=True`."
        )

    if "latents" not in data:
        stale("no 'latents' array in the file")
    latents = data["latents"]
    latent_shape = tuple(latents.shape[1:])
    if latent_shape != tuple(autoencoder.latent_shape):
        stale(
            f"latent shape {latent_shape}, the autoencoder's is "
            f"{autoencoder.latent_shape}"
        )
    if "scaling_factor" in data and not np.isclose(
        float(data["scaling_factor"]), autoencoder.scaling_factor
    ):
        stale(
            f"scaling_factor {float(data['scaling_factor'])}, the "
            f"autoencoder's is {autoencoder.scaling_factor}"
        )
    if has_labels != ("labels" in data):
        stale(
            "the dataset has labels and the cache none"
            if has_labels
            else "the cache has labels and the dataset none"
        )
    if num_images is not None and len(latents) != num_images:
        stale(f"{len(latents)} latents for {num_images} images")
    if "sample" in data and bool(data["sample"]) != sample:
        stale(f"saved with sample={bool(data['sample'])}")
    if sample and seed is not None and "seed" in data:
        saved = int(data["seed"])
        if saved >= 0 and saved != seed:
            stale(f"sampled with seed={saved}")
    if has_labels:
        return latents, data["labels"]
    return latents


def _save(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def encode_dataset(
    autoencoder,
    dataset,
    batch_size=64,
    path=None,
    sample=False,
    seed=None,
    overwrite=False,
    verbose=1,
):
    """Encodes an image dataset once, into latent arrays (cached as .npz).

    Latent diffusion trains on the latents of a frozen autoencoder; encoding
    the images once, instead of at every step, takes the autoencoder out of
    the training loop. Labels stay aligned with their latents (a shuffling
    dataset gives the latents in the order of the pass that was encoded,
    with the labels of that pass).

    Args:
        autoencoder: a `keras_immiscible.latent.Autoencoder` (e.g.
            `StableDiffusionVAE`).
        dataset: images `(N, H, W, C)` (numpy, float in the autoencoder's
            `image_range` or uint8), a pair `(images, labels)` of arrays, or
            a finite `tf.data.Dataset` of images, `(images,)`,
            `(images, labels)` or `{"images", "labels"}` elements, batched
            (its batches are used as they are) or not (batched here).
        batch_size: images per `encode` call for arrays and unbatched
            datasets.
        path: None, or the path of a `.npz` cache: if it exists (and
            `overwrite` is False), the latents are loaded from it without
            running the encoder (after checking that its latent shape,
            scaling factor, labels, size and `sample` match this call);
            otherwise they are computed and saved there (arrays `latents`,
            `labels` if any, and the metadata checked on loading).
        sample: passed to `Autoencoder.encode`: False stores the posterior
            means, True one posterior sample per image (Stable Diffusion's
            training code samples at every step; a cache fixes one sample).
        seed: int seed of the samples (None: random); the batches get
            different noise from one `keras.random.SeedGenerator(seed)`.
        overwrite: recompute and overwrite an existing cache.
        verbose: 1 shows a `keras.utils.Progbar` (and a line when the cache
            is loaded), 0 is silent.

    Returns:
        float32 latents `(N, *autoencoder.latent_shape)`, or
        `(latents, labels)` when the dataset has labels.

    Example:

    >>> vae = keras_immiscible.latent.StableDiffusionVAE(image_size=256)
    >>> latents, labels = encode_dataset(
    ...     vae, (images, labels), batch_size=32, path="latents.npz"
    ... )
    >>> latents.shape
    (N, 32, 32, 4)
    """
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError(
            "encode_dataset: `autoencoder` must be a "
            "keras_immiscible.latent.Autoencoder (wrap an encoder/decoder "
            f"pair with `Autoencoder(encoder, decoder)`), got {autoencoder!r}."
        )
    batch_size = arguments.check_positive_int(batch_size, "batch_size")
    sample = arguments.check_bool(sample, "sample")
    arguments.check_seed(seed)
    if path is not None:
        path = os.fspath(path)

    if _is_tf_dataset(dataset):
        try:
            image_rank = len(autoencoder.image_shape)
        except ValueError:  # a callable encoder without `image_shape`
            image_rank = 3
        batches, num_batches, num_images, has_labels = _tf_batches(
            dataset, batch_size, image_rank
        )
    else:
        if isinstance(dataset, (tuple, list, dict)):
            images, labels = _split_element(dataset, "encode_dataset")
        else:
            images, labels = dataset, None
        batches, num_batches, num_images, has_labels = _array_batches(
            images, labels, batch_size
        )

    if path is not None and os.path.exists(path) and not overwrite:
        with np.load(path) as data:
            result = _check_cache(
                {key: data[key] for key in data.files},
                path,
                autoencoder,
                num_images,
                has_labels,
                sample,
                seed,
            )
        if verbose:
            count = len(result[0] if has_labels else result)
            print(f"encode_dataset: loaded {count} latents from {path}")
        return result

    seed_generator = keras.random.SeedGenerator(seed) if sample else None
    progbar = keras.utils.Progbar(num_batches, verbose=verbose, unit_name="batch")
    all_latents, all_labels = [], []
    step = 0
    for step, (images, labels) in enumerate(batches, start=1):
        if len(images) == 0:
            continue
        latents = autoencoder.encode(images, sample=sample, seed=seed_generator)
        all_latents.append(keras.ops.convert_to_numpy(latents))
        if has_labels:
            all_labels.append(np.asarray(labels))
        progbar.update(step)
    if num_batches is None and step:
        progbar.update(step, finalize=True)
    if not all_latents:
        raise ValueError("encode_dataset: the dataset holds no images.")
    latents = np.concatenate(all_latents).astype("float32", copy=False)
    labels = np.concatenate(all_labels) if has_labels else None
    if path is not None:
        arrays = {
            "latents": latents,
            "scaling_factor": np.float64(autoencoder.scaling_factor),
            "sample": np.bool_(sample),
            "seed": np.int64(-1 if seed is None else seed),
            "version": np.int64(CACHE_VERSION),
        }
        if has_labels:
            arrays["labels"] = labels
        _save(path, arrays)
    if has_labels:
        return latents, labels
    return latents
