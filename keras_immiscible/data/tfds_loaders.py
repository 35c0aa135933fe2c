"""tensorflow-datasets loaders: CIFAR-10, CelebA and Oxford Flowers 102.

Each loader returns a batched, shuffled, cached and prefetched
`tf.data.Dataset` of float32 images in [0, 1] (or uint8), channels last,
ready for `model.fit(dataset)` on any Keras backend.

No hidden downloads: by default a loader only reads data that is already
prepared in the tensorflow-datasets data directory, and fails at once with a
`DatasetNotPreparedError` saying how to prepare it when it is not there.
Pass `download=True` to let tensorflow-datasets download and prepare it
(this needs network access).
"""

import numbers
import os

from keras_immiscible.data import pipeline
from keras_immiscible.utils import arguments

TFDS_EXTRA = "keras-immiscible[tfds]"

#: The CelebA crop of the DDIM code (github.com/ermongroup/ddim,
#: `datasets/__init__.py`): the 128x128 box centred on row 121, column 89 of
#: the 218x178 aligned faces, i.e. rows 57-184 and columns 25-152.
DDIM_CELEBA_BOX = (121 - 64, 89 - 64, 128, 128)


class DatasetNotPreparedError(FileNotFoundError):
    """A tensorflow-datasets data set is not prepared in the data directory.

    Raised by the loaders of `keras_immiscible.data` instead of starting a
    download (or hanging on one without network). The message names the
    data set, the directory that was searched and how to prepare it offline.
    An `OSError` (`FileNotFoundError`) subclass.

    Example:

    ```python
    try:
        dataset = keras_immiscible.data.load_cifar10(data_dir="/data/tfds")
    except keras_immiscible.data.DatasetNotPreparedError as error:
        print(error)  # how to prepare cifar10 in /data/tfds offline
        dataset = keras_immiscible.data.digits_dataset(128)
    ```
    """


def _import_tfds():
    hint = (
        f"`pip install {TFDS_EXTRA}` together with TensorFlow, e.g. "
        '`pip install "keras-immiscible[tfds,tensorflow-cpu]"` (they work '
        "with every Keras backend)."
    )
    try:
        import tensorflow as tf  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "The tensorflow-datasets loaders need TensorFlow and "
            f"tensorflow-datasets: {hint}"
        ) from e
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "The tensorflow-datasets loaders need the `tensorflow-datasets` "
            f"package: {hint}"
        ) from e
    return tfds


def _not_prepared_message(name, builder_dir, data_dir, reason, extra=""):
    root = (
        data_dir
        if data_dir is not None
        else os.path.dirname(os.path.dirname(builder_dir))
    )
    return (
        f"The tensorflow-datasets data set '{name}' is not prepared in the "
        f"data directory {root!r} (looked for {builder_dir!r}), and "
        "keras_immiscible does not download data unless asked to. Either:\n"
        f"  * prepare it on a machine with network access, with "
        f"`tfds build {name} --data_dir=DIR` or "
        f"`tfds.builder('{name}', data_dir=DIR).download_and_prepare()`, "
        "copy DIR here and pass `data_dir=DIR` (or set the TFDS_DATA_DIR "
        "environment variable);\n"
        "  * or pass `download=True` to download and prepare it now (needs "
        f"network access).{extra}\n"
        f"(tensorflow-datasets said: {reason})"
    )


def _tfds_source(name, split, data_dir, download, shuffle_files, seed, extra=""):
    """Opens a prepared tfds split as a dataset of feature dicts."""
    tfds = _import_tfds()
    if not isinstance(split, str) or not split.strip():
        raise ValueError(
            "`split` must be a non-empty tensorflow-datasets split string "
            f"such as 'train' or 'train[:80%]+test', got {split!r}."
        )
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"`data_dir` must be None or a path, got {data_dir!r}.")
        data_dir = os.fspath(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise DatasetNotPreparedError(
                f"Downloading and preparing '{name}' into "
                f"{builder.data_dir!r} failed: {e}{extra}"
            ) from e
    read_config = tfds.ReadConfig(shuffle_seed=seed) if shuffle_files else None
    try:
        return builder.as_dataset(
            split=split, shuffle_files=shuffle_files, read_config=read_config
        ), builder
    except AssertionError as e:
        # tensorflow-datasets asserts that the prepared files exist.
        raise DatasetNotPreparedError(
            _not_prepared_message(name, builder.data_dir, data_dir, e, extra)
        ) from e
    except ValueError as e:
        raise ValueError(f"`split`={split!r} is not valid for '{name}': {e}") from e


def _check_common(
    image_size,
    batch_size,
    shuffle,
    cache,
    drop_remainder,
    flip,
    with_labels,
    download,
    seed,
    dtype,
):
    return dict(
        size=pipeline.check_image_size(image_size),
        batch_size=arguments.check_positive_int(batch_size, "batch_size"),
        shuffle_buffer=pipeline.check_shuffle(shuffle),
        cache=pipeline.check_cache(cache),
        drop_remainder=arguments.check_bool(drop_remainder, "drop_remainder"),
        flip=arguments.check_bool(flip, "flip"),
        with_labels=arguments.check_bool(with_labels, "with_labels"),
        download=arguments.check_bool(download, "download"),
        seed=arguments.check_seed(seed),
        dtype=pipeline.check_dtype(dtype),
    )


def _build(name, split, data_dir, args, preprocess, extra=""):
    source, _ = _tfds_source(
        name,
        split,
        data_dir,
        args["download"],
        shuffle_files=bool(args["shuffle_buffer"]),
        seed=args["seed"],
        extra=extra,
    )
    import tensorflow as tf

    size = args["size"]
    if args["with_labels"]:

        def to_element(example):
            return (
                preprocess(example["image"], size),
                tf.cast(example["label"], tf.int32),
            )
    else:

        def to_element(example):
            return preprocess(example["image"], size)

    dataset = source.map(to_element, num_parallel_calls=tf.data.AUTOTUNE)
    return pipeline.finish(
        dataset,
        batch_size=args["batch_size"],
        shuffle_buffer=args["shuffle_buffer"],
        cache=args["cache"],
        flip=args["flip"],
        drop_remainder=args["drop_remainder"],
        seed=args["seed"],
        dtype=args["dtype"],
        with_labels=args["with_labels"],
    )


def _center_square(image, size):
    import tensorflow as tf

    shape = tf.shape(image)
    box = pipeline.center_crop_box(shape[0], shape[1], size[0], size[1])
    return pipeline.crop_and_resize(image, box, size)


def load_cifar10(
    split="train",
    image_size=32,
    batch_size=128,
    *,
    shuffle=True,
    cache=True,
    drop_remainder=True,
    flip=False,
    with_labels=False,
    data_dir=None,
    download=False,
    seed=None,
    dtype="float32",
):
    """CIFAR-10 (tfds `cifar10`) as a batched `tf.data.Dataset`.

    The 32x32 images are resized (bilinear, antialiased) when `image_size`
    is not 32. The Immiscible Diffusion papers train on the 50,000 training
    images at 32x32, with horizontal flips.

    Args:
        split: tensorflow-datasets split: `"train"` (50,000 images),
            `"test"` (10,000) or any slice such as `"train[:10%]"`.
        image_size: int, side of the output images.
        batch_size: int, images per batch.
        shuffle: True (a 10,000-image shuffle buffer, reshuffled every
            epoch, and shuffled file order), False, or an int buffer size.
        cache: True (cache the decoded images in memory, as uint8), False, or
            a file path for an on-disk cache. The cache comes before the
            shuffle and the flip, so both change every epoch.
        drop_remainder: drop the last, smaller batch (every batch then has
            `batch_size` images, which batch-wise noise assignment prefers).
        flip: random horizontal flips (probability 1/2 per image, new every
            epoch).
        with_labels: yield `(images, labels)` with int32 labels 0-9.
        data_dir: tensorflow-datasets data directory (default: the
            `TFDS_DATA_DIR` environment variable or `~/tensorflow_datasets`).
        download: download and prepare the data if it is missing (needs
            network access). By default missing data raises a
            `DatasetNotPreparedError` at once.
        seed: int seed of the shuffles and flips (None: not reproducible).
        dtype: `"float32"` (images in [0, 1]) or `"uint8"`.

    Returns:
        A `tf.data.Dataset` of `(batch, image_size, image_size, 3)` images,
        or of `(images, labels)` pairs.

    Example:

    ```python
    dataset = keras_immiscible.data.load_cifar10(batch_size=256, flip=True)
    model.fit(dataset, epochs=10)
    ```
    """
    args = _check_common(
        image_size,
        batch_size,
        shuffle,
        cache,
        drop_remainder,
        flip,
        with_labels,
        download,
        seed,
        dtype,
    )
    return _build("cifar10", split, data_dir, args, _center_square)


def load_celeba(
    split="train",
    image_size=64,
    batch_size=128,
    *,
    crop=140,
    shuffle=True,
    cache=True,
    drop_remainder=True,
    flip=False,
    data_dir=None,
    download=False,
    seed=None,
    dtype="float32",
):
    """CelebA aligned faces (tfds `celeb_a`), center-cropped and resized.

    The aligned faces are 218 (high) x 178 (wide). By default the loader
    crops the centered 140x140 square (rows 39-178, columns 19-158), then
    resizes it (bilinear, antialiased) to `image_size`: the CelebA-64
    preprocessing of the score-SDE / NCSN++ code (Song et al., 2021,
    github.com/yang-song/score_sde, `datasets.py`: `central_crop(img, 140)`
    then `resize_small`). `crop="ddim"` uses the DDIM code's crop instead
    (github.com/ermongroup/ddim, `datasets/__init__.py`): the 128x128 box
    centred on row 121, column 89.

    CelebA has no class labels (only attributes), so there is no
    `with_labels`.

    Args:
        split: `"train"` (162,770 images), `"validation"`, `"test"` or a
            slice such as `"train[:1%]"`.
        image_size: int, side of the output images (64 in the literature).
        batch_size: int, images per batch.
        crop: int, side of the centered square crop (at most 178); or
            `"ddim"` for the DDIM crop; or `"square"` for the largest
            centered square (178x178).
        shuffle, cache, drop_remainder, flip, data_dir, download, seed,
            dtype: as in `load_cifar10`. The in-memory cache of the full
            training split at 64x64 takes about 2 GB (uint8); pass a file
            path as `cache` to cache on disk instead.

    Returns:
        A `tf.data.Dataset` of `(batch, image_size, image_size, 3)` images.

    Example:

    ```python
    faces = keras_immiscible.data.load_celeba(image_size=64, batch_size=128)
    ```
    """
    args = _check_common(
        image_size,
        batch_size,
        shuffle,
        cache,
        drop_remainder,
        flip,
        False,
        download,
        seed,
        dtype,
    )
    box = _celeba_box(crop)

    def preprocess(image, size):
        if box is None:
            return _center_square(image, size)
        return pipeline.crop_and_resize(image, box, size)

    extra = (
        "\nCelebA's automatic download (Google Drive) often fails; see the "
        "tensorflow-datasets catalog page of celeb_a for a manual download."
    )
    return _build("celeb_a", split, data_dir, args, preprocess, extra)


def _celeba_box(crop):
    """`(top, left, height, width)` of the CelebA crop; None: largest square."""
    if crop == "ddim":
        return DDIM_CELEBA_BOX
    if crop == "square":
        return None
    if (
        isinstance(crop, bool)
        or not isinstance(crop, numbers.Integral)
        or not 0 < crop <= 178
    ):
        raise ValueError(
            "`crop` must be the side of the centered square crop (an int in "
            "1..178, 140 in the CelebA-64 literature), 'ddim' or 'square', "
            f"got {crop!r}."
        )
    crop = int(crop)
    return ((218 - crop) // 2, (178 - crop) // 2, crop, crop)


def load_oxford_flowers(
    split="train[:80%]+validation[:80%]+test[:80%]",
    image_size=64,
    batch_size=64,
    *,
    shuffle=True,
    cache=True,
    drop_remainder=True,
    flip=False,
    with_labels=False,
    data_dir=None,
    download=False,
    seed=None,
    dtype="float32",
):
    """Oxford Flowers 102 (tfds `oxford_flowers102`), center-cropped squares.

    Each photo is cropped to its largest centered square and resized
    (bilinear, antialiased) to `image_size`. The official splits put most
    images in "test", so, like the keras.io "Denoising Diffusion Implicit
    Models" example (64x64 images, batch 64), the default split takes the
    first 80% of each official split for training (about 6,550 images); use
    `"train[80%:]+validation[80%:]+test[80%:]"` for the held-out 20%.

    Args:
        split: tensorflow-datasets split string (see above).
        image_size: int, side of the output images.
        batch_size: int, images per batch.
        with_labels: yield `(images, labels)` with int32 labels 0-101.
        shuffle, cache, drop_remainder, flip, data_dir, download, seed,
            dtype: as in `load_cifar10`.

    Returns:
        A `tf.data.Dataset` of `(batch, image_size, image_size, 3)` images,
        or of `(images, labels)` pairs.

    Example:

    ```python
    flowers = keras_immiscible.data.load_oxford_flowers(image_size=64)
    held_out = keras_immiscible.data.load_oxford_flowers(
        "train[80%:]+validation[80%:]+test[80%:]", shuffle=False)
    ```
    """
    args = _check_common(
        image_size,
        batch_size,
        shuffle,
        cache,
        drop_remainder,
        flip,
        with_labels,
        download,
        seed,
        dtype,
    )
    return _build("oxford_flowers102", split, data_dir, args, _center_square)
