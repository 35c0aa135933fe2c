"""Tests of `keras_immiscible.data`: tfds loaders (under
`tfds.testing.mock_data`), `from_directory`, `from_numpy` and the digits.

Pixel values are compared with independent references: numpy crops with the
crop boxes written out by hand, Pillow's bilinear resize (the same
antialiased triangle filter as `tf.image.resize(antialias=True)`), `np.kron`
and `scipy.ndimage.zoom` for the upsampled digits.
"""

import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import keras_immiscible as ki
from keras_immiscible.data import DatasetNotPreparedError

tf = pytest.importorskip("tensorflow")
Image = pytest.importorskip("PIL.Image")
try:
    import tensorflow_datasets as tfds
except ImportError:  # optional: only the tfds loaders' tests need it
    tfds = None

#: Marks the tests that read (mocked) tensorflow-datasets data. The others
#: (argument checks, from_directory, from_numpy, the digits) run without it.
requires_tfds = pytest.mark.skipif(
    tfds is None,
    reason="needs tensorflow-datasets (pip install keras-immiscible[tfds])",
)

LOADERS = {
    "cifar10": ki.data.load_cifar10,
    "celeb_a": ki.data.load_celeba,
    "oxford_flowers102": ki.data.load_oxford_flowers,
}


# ---------------------------------------------------------------- helpers


def _mock_examples(images, labels=None):
    """An `as_dataset_fn` for `tfds.testing.mock_data` serving `images`."""

    def as_dataset(self, *args, **kwargs):
        def generate():
            for i, image in enumerate(images):
                label = 0 if labels is None else labels[i]
                yield {"image": image, "label": np.int64(label)}

        return tf.data.Dataset.from_generator(
            generate,
            output_signature={
                "image": tf.TensorSpec((None, None, 3), tf.uint8),
                "label": tf.TensorSpec((), tf.int64),
            },
        )

    return as_dataset


def _batches(dataset):
    return [
        tuple(np.asarray(t) for t in b) if isinstance(b, tuple) else np.asarray(b)
        for b in dataset
    ]


def _pil_resize(image, size):
    """Reference: Pillow's bilinear (antialiased) resize, per channel."""
    channels = [
        np.asarray(
            Image.fromarray(image[..., c].astype("float32"), mode="F").resize(
                (size, size), Image.BILINEAR
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def _frame(height, width, top, left, size):
    """Zeros with a `size` x `size` square of 255 at (top, left)."""
    image = np.zeros((height, width, 3), "uint8")
    image[top : top + size, left : left + size] = 255
    return image


def _is_mirror(a, b):
    return np.array_equal(a, b[:, ::-1])


# ------------------------------------------------------ tfds: mocked data


@requires_tfds
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_tfds_loader_batches_shape_dtype_range(name):
    loader = LOADERS[name]
    with tfds.testing.mock_data(num_examples=10):
        dropped = _batches(loader(batch_size=4, image_size=8, seed=0))
        kept = _batches(
            loader(batch_size=4, image_size=8, drop_remainder=False, seed=0)
        )
        as_uint8 = _batches(
            loader(batch_size=4, image_size=8, shuffle=False, dtype="uint8")
        )
        as_float = _batches(loader(batch_size=4, image_size=8, shuffle=False))
    assert [b.shape for b in dropped] == [(4, 8, 8, 3)] * 2
    assert [b.shape[0] for b in kept] == [4, 4, 2]
    for batch in dropped + kept:
        assert batch.dtype == np.float32
        assert 0.0 <= batch.min() and batch.max() <= 1.0
        assert batch.std() > 0.01  # real pixels, not a constant
    # float32 output is exactly the uint8 output / 255.
    for small, large in zip(as_uint8, as_float):
        assert small.dtype == np.uint8
        np.testing.assert_allclose(large, small / 255.0, atol=1e-7)


@requires_tfds
@pytest.mark.parametrize("name", ["cifar10", "oxford_flowers102"])
def test_tfds_loader_labels(name):
    rng = np.random.default_rng(1)
    images = list(rng.integers(0, 256, (6, 12, 12, 3), dtype="uint8"))
    labels = [3, 1, 4, 1, 5, 9]
    with tfds.testing.mock_data(as_dataset_fn=_mock_examples(images, labels)):
        batches = _batches(
            LOADERS[name](batch_size=3, image_size=12, shuffle=False, with_labels=True)
        )
    got_images = np.concatenate([b[0] for b in batches])
    got_labels = np.concatenate([b[1] for b in batches])
    assert got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(
        np.round(got_images * 255).astype("uint8"), np.stack(images)
    )


@requires_tfds
def test_cifar10_native_size_is_exact_and_resize_matches_pillow():
    rng = np.random.default_rng(2)
    images = list(rng.integers(0, 256, (4, 32, 32, 3), dtype="uint8"))
    with tfds.testing.mock_data(as_dataset_fn=_mock_examples(images)):
        native = _batches(ki.data.load_cifar10(batch_size=4, shuffle=False))[0]
        small = _batches(
            ki.data.load_cifar10(batch_size=4, image_size=8, shuffle=False)
        )[0]
    np.testing.assert_array_equal(
        np.round(native * 255).astype("uint8"), np.stack(images)
    )
    for image, got in zip(images, small):
        reference = np.round(_pil_resize(image, 8)) / 255.0
        np.testing.assert_allclose(got, reference, atol=1.01 / 255)


@requires_tfds
def test_celeba_center_crop_140():
    # The aligned faces are 218 x 178; the centered 140 x 140 square starts
    # at row (218 - 140) / 2 = 39 and column (178 - 140) / 2 = 19.
    inside = _frame(218, 178, 39, 19, 140)
    shifted = _frame(218, 178, 40, 19, 140)  # one row too low
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (218, 178, 3), dtype="uint8")
    with tfds.testing.mock_data(as_dataset_fn=_mock_examples([inside, shifted, noise])):
        out = _batches(ki.data.load_celeba(batch_size=3, image_size=16, shuffle=False))[
            0
        ]
    # Exactly the square: all white. One row off: black leaks in at the top.
    np.testing.assert_array_equal(out[0], np.ones((16, 16, 3), "float32"))
    assert out[1][0].max() < 0.99 and out[1][8:].min() == 1.0
    reference = np.round(_pil_resize(noise[39:179, 19:159], 16)) / 255.0
    np.testing.assert_allclose(out[2], reference, atol=1.01 / 255)


@requires_tfds
def test_celeba_ddim_crop():
    # DDIM's crop: 128 x 128 centred on row 121, column 89 -> rows 57-184,
    # columns 25-152.
    inside = _frame(218, 178, 57, 25, 128)
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (218, 178, 3), dtype="uint8")
    with tfds.testing.mock_data(as_dataset_fn=_mock_examples([inside, noise])):
        out = _batches(
            ki.data.load_celeba(batch_size=2, image_size=8, crop="ddim", shuffle=False)
        )[0]
    np.testing.assert_array_equal(out[0], np.ones((8, 8, 3), "float32"))
    reference = np.round(_pil_resize(noise[57:185, 25:153], 8)) / 255.0
    np.testing.assert_allclose(out[1], reference, atol=1.01 / 255)


@requires_tfds
def test_oxford_flowers_center_square_of_any_shape():
    wide = _frame(30, 50, 0, 10, 30)  # centered square: columns 10-39
    tall = _frame(45, 21, 12, 0, 21)  # centered square: rows 12-32
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (40, 64, 3), dtype="uint8")
    with tfds.testing.mock_data(as_dataset_fn=_mock_examples([wide, tall, noise])):
        out = _batches(
            ki.data.load_oxford_flowers(batch_size=3, image_size=10, shuffle=False)
        )[0]
    np.testing.assert_array_equal(out[0], np.ones((10, 10, 3), "float32"))
    np.testing.assert_array_equal(out[1], np.ones((10, 10, 3), "float32"))
    reference = np.round(_pil_resize(noise[:, 12:52], 10)) / 255.0
    np.testing.assert_allclose(out[2], reference, atol=1.01 / 255)


@requires_tfds
def test_flip_mirrors_some_images_seeded_and_new_each_epoch():
    rng = np.random.default_rng(6)
    images = list(rng.integers(0, 256, (16, 8, 8, 3), dtype="uint8"))
    originals = np.stack(images).astype("float32") / 255.0
    with tfds.testing.mock_data(as_dataset_fn=_mock_examples(images)):

        def epochs(flip, seed, count):
            dataset = ki.data.load_cifar10(
                batch_size=16,
                image_size=8,
                shuffle=False,
                flip=flip,
                seed=seed,
            )
            return [_batches(dataset)[0] for _ in range(count)]

        flipped = epochs(True, 7, 2)
        again = epochs(True, 7, 1)
        plain = epochs(False, 7, 1)

    def mirrored(batch):
        flags = []
        for got, original in zip(batch, originals):
            if np.array_equal(got, original):
                flags.append(False)
            else:
                assert _is_mirror(got, original)
                flags.append(True)
        return np.array(flags)

    first, second = mirrored(flipped[0]), mirrored(flipped[1])
    assert 0 < first.sum() < 16
    np.testing.assert_array_equal(mirrored(again[0]), first)  # seeded
    assert not np.array_equal(first, second)  # new flips every epoch
    assert not mirrored(plain[0]).any()


@requires_tfds
def test_shuffle_is_seeded_and_reshuffles_every_epoch(tmp_path):
    images = [np.full((4, 4, 3), i * 10, dtype="uint8") for i in range(12)]
    with tfds.testing.mock_data(as_dataset_fn=_mock_examples(images)):

        def order(dataset):
            batch = _batches(dataset)[0]
            return tuple(np.round(batch[:, 0, 0, 0] * 25.5).astype(int))

        a = ki.data.load_cifar10(batch_size=12, image_size=4, seed=1)
        b = ki.data.load_cifar10(
            batch_size=12, image_size=4, seed=1, cache=str(tmp_path / "c")
        )
        first, second = order(a), order(a)
        from_file_cache = order(b)
    assert sorted(first) == list(range(12)) == sorted(second)
    assert first != tuple(range(12)) and first != second
    assert from_file_cache == first  # same seed, same first-epoch order
    assert any(p.name.startswith("c") for p in tmp_path.iterdir())


@requires_tfds
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_tfds_loader_without_data_fails_fast(name, tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError) as info:
        LOADERS[name](data_dir=str(tmp_path))
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert name in message and str(tmp_path) in message
    assert "tfds build" in message and "download=True" in message


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(image_size=0), ValueError, "`image_size`"),
        (dict(image_size=32.0), ValueError, "`image_size`"),
        (dict(image_size=True), ValueError, "`image_size`"),
        (dict(batch_size=-1), ValueError, "`batch_size`"),
        (dict(shuffle=-5), ValueError, "`shuffle`"),
        (dict(cache=3), ValueError, "`cache`"),
        (dict(flip="yes"), TypeError, "`flip`"),
        (dict(drop_remainder=None), TypeError, "`drop_remainder`"),
        (dict(seed=1.5), TypeError, "`seed`"),
        (dict(dtype="float16"), ValueError, "`dtype`"),
        # (checked once tensorflow-datasets is imported)
        pytest.param(dict(split=""), ValueError, "`split`", marks=requires_tfds),
        pytest.param(dict(data_dir=3), TypeError, "`data_dir`", marks=requires_tfds),
    ],
)
def test_tfds_loader_argument_checks(kwargs, error, match):
    with pytest.raises(error, match=match):
        ki.data.load_cifar10(**kwargs)


@pytest.mark.parametrize("crop", [0, 179, "top", 140.0])
def test_celeba_crop_check(crop):
    with pytest.raises(ValueError, match="`crop`"):
        ki.data.load_celeba(crop=crop)


# ----------------------------------------------------------- from_directory


def _write_tree(root, rng):
    """PNGs in two class folders (one nested), a JPEG-free text file and a
    non-square image; returns {relative path: array}."""
    written = {}
    for rel, shape in [
        ("cats/a.png", (8, 8, 3)),
        ("cats/b.png", (8, 12, 3)),  # wide: center crop keeps columns 2-9
        ("dogs/deep/c.PNG", (8, 8, 3)),
        ("dogs/d.png", (8, 8, 3)),
    ]:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        array = rng.integers(0, 256, shape, dtype="uint8")
        Image.fromarray(array).save(path)
        written[rel] = array
    with open(os.path.join(root, "cats", "notes.txt"), "w") as f:
        f.write("not an image")
    return written


def test_from_directory_pixels_order_and_labels(tmp_path):
    written = _write_tree(str(tmp_path), np.random.default_rng(9))
    dataset = ki.data.from_directory(
        tmp_path, 8, batch_size=4, shuffle=False, with_labels=True
    )
    ((images, labels),) = _batches(dataset)
    expected_order = ["cats/a.png", "cats/b.png", "dogs/d.png", "dogs/deep/c.PNG"]
    assert [
        os.path.relpath(p, tmp_path).replace(os.sep, "/") for p in dataset.file_paths
    ] == expected_order
    assert dataset.class_names == ["cats", "dogs"]
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    assert images.dtype == np.float32 and images.shape == (4, 8, 8, 3)
    expected = [written[rel] for rel in expected_order]
    expected[1] = expected[1][:, 2:10]
    np.testing.assert_array_equal(
        np.round(images * 255).astype("uint8"), np.stack(expected)
    )


def test_from_directory_resize_grayscale_and_no_crop(tmp_path):
    rng = np.random.default_rng(10)
    grey = rng.integers(0, 256, (20, 20), dtype="uint8")
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = _batches(
        ki.data.from_directory(
            tmp_path, 5, batch_size=1, color_mode="grayscale", shuffle=False
        )
    )[0]
    assert out.shape == (1, 5, 5, 1)
    # The default "area" resize averages each 4x4 block.
    blocks = grey.reshape(5, 4, 5, 4).astype("float64").mean((1, 3))
    np.testing.assert_allclose(
        out[0, ..., 0], np.round(blocks) / 255.0, atol=1.01 / 255
    )
    # Bilinear, half-pixel centres, not antialiased: output pixel i samples
    # input position 4 i + 1.5, the mean of pixels 4 i + 1 and 4 i + 2.
    out = _batches(
        ki.data.from_directory(
            tmp_path,
            5,
            batch_size=1,
            color_mode="grayscale",
            shuffle=False,
            interpolation="bilinear",
        )
    )[0]
    g = grey.astype("float64")
    taps = (g[1::4, 1::4] + g[1::4, 2::4] + g[2::4, 1::4] + g[2::4, 2::4]) / 4
    np.testing.assert_allclose(out[0, ..., 0], np.round(taps) / 255.0, atol=1.01 / 255)
    # A grey PNG read as RGB has three equal channels.
    rgb = _batches(ki.data.from_directory(tmp_path, 20, batch_size=1, shuffle=False))[0]
    for channel in range(3):
        np.testing.assert_array_equal(np.round(rgb[0, ..., channel] * 255), grey)
    # crop=None squeezes the whole (non-square) image.
    wide = rng.integers(0, 256, (4, 8, 3), dtype="uint8")
    Image.fromarray(wide).save(tmp_path / "g.png")
    out = _batches(
        ki.data.from_directory(tmp_path, (4, 8), batch_size=1, crop=None, shuffle=False)
    )[0]
    np.testing.assert_array_equal(np.round(out[0] * 255), wide)


def test_from_directory_shuffle_is_seeded_and_reshuffles(tmp_path):
    for i in range(12):
        Image.fromarray(np.full((4, 4, 3), i * 10, "uint8")).save(
            tmp_path / f"{i:02d}.png"
        )

    def first_pixels(batch):
        return tuple(np.round(batch[:, 0, 0, 0] * 25.5).astype(int))

    a = ki.data.from_directory(tmp_path, 4, 12, seed=3)
    b = ki.data.from_directory(tmp_path, 4, 12, seed=3, cache=False)
    names = [os.path.basename(p) for p in a.file_paths]
    assert names == [os.path.basename(p) for p in b.file_paths]
    assert sorted(names) == [f"{i:02d}.png" for i in range(12)] != names
    first, second = (first_pixels(_batches(a)[0]) for _ in range(2))
    assert sorted(first) == list(range(12)) == sorted(second)
    assert first != second  # a new order every epoch
    assert first_pixels(_batches(b)[0]) == first  # same seed, same order
    plain = ki.data.from_directory(tmp_path, 4, 12, shuffle=False)
    assert first_pixels(_batches(plain)[0]) == tuple(range(12))


def test_from_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ki.data.from_directory(tmp_path / "missing", 8, 4)
    with pytest.raises(ValueError, match="No images found in directory"):
        ki.data.from_directory(tmp_path, 8, 4)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No images found in directory"):
        ki.data.from_directory(tmp_path, 8, 4)
    with pytest.raises(NotADirectoryError):
        ki.data.from_directory(tmp_path / "readme.txt", 8, 4)
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="fewer than batch_size"):
        ki.data.from_directory(tmp_path, 8, 4)
    with pytest.raises(ValueError, match="subfolder"):
        ki.data.from_directory(tmp_path, 8, 1, with_labels=True)
    with pytest.raises(ValueError, match="`color_mode`"):
        ki.data.from_directory(tmp_path, 8, 1, color_mode="cmyk")
    with pytest.raises(ValueError, match="`crop`"):
        ki.data.from_directory(tmp_path, 8, 1, crop="random")
    with pytest.raises(ValueError, match="`interpolation` must be one of"):
        ki.data.from_directory(tmp_path, 8, 1, interpolation="cubic")
    with pytest.raises(ValueError, match="`image_size`"):
        ki.data.from_directory(tmp_path, (8, 8, 3), 1)


# ---------------------------------------------------------------- from_numpy


def test_from_numpy_values_labels_and_shuffle():
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (10, 4, 4, 3), dtype="uint8")
    labels = np.arange(10) * 7
    dataset = ki.data.from_numpy(images, 4, labels=labels, seed=0)
    epoch_1, epoch_2 = _batches(dataset), _batches(dataset)
    assert [b[0].shape[0] for b in epoch_1] == [4, 4]  # remainder dropped
    for epoch in (epoch_1, epoch_2):
        got_images = np.concatenate([b[0] for b in epoch])
        got_labels = np.concatenate([b[1] for b in epoch])
        assert got_images.dtype == np.float32 and got_labels.dtype == np.int32
        index = got_labels // 7  # labels identify the source image
        assert len(set(index.tolist())) == 8
        np.testing.assert_allclose(got_images, images[index] / 255.0)
    order_1 = np.concatenate([b[1] for b in epoch_1])
    order_2 = np.concatenate([b[1] for b in epoch_2])
    assert not np.array_equal(order_1, order_2)  # reshuffled
    # Unshuffled float input passes through unchanged, remainder kept.
    floats = rng.uniform(0, 1, (5, 2, 2, 1)).astype("float64")
    batches = _batches(
        ki.data.from_numpy(floats, 2, shuffle=False, drop_remainder=False)
    )
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_allclose(np.concatenate(batches), floats, rtol=1e-6)
    as_uint8 = _batches(ki.data.from_numpy(floats, 5, shuffle=False, dtype="uint8"))[0]
    np.testing.assert_array_equal(as_uint8, np.round(floats * 255))


def test_from_numpy_flip():
    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, (16, 4, 4, 3), dtype="uint8")
    out = _batches(
        ki.data.from_numpy(images, 16, shuffle=False, flip=True, seed=2, dtype="uint8")
    )[0]
    flipped = [not np.array_equal(o, i) for o, i in zip(out, images)]
    assert 0 < sum(flipped) < 16
    for o, i, f in zip(out, images, flipped):
        if f:
            assert _is_mirror(o, i)


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (np.zeros((4, 8, 8)), {}, ValueError, r"images\[\.\.\., None\]"),
        (np.zeros((4, 8, 8, 1), "int32"), {}, TypeError, "uint8"),
        (np.full((4, 2, 2, 1), np.nan), {}, ValueError, "NaN"),
        (np.full((4, 2, 2, 1), 2.0), {}, ValueError, r"\[0, 1\]"),
        (np.zeros((4, 2, 2, 1)), dict(labels=[0, 1]), ValueError, "`labels`"),
        (np.zeros((4, 2, 2, 1)), dict(labels=[0.5] * 4), TypeError, "`labels`"),
        (
            np.zeros((2, 2, 2, 1)),
            dict(batch_size=3),
            ValueError,
            "fewer than batch_size",
        ),
        (np.zeros((4, 2, 2, 1)), dict(batch_size=0), ValueError, "`batch_size`"),
    ],
)
def test_from_numpy_checks(images, kwargs, error, match):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(error, match=match):
        ki.data.from_numpy(images, **kwargs)


# -------------------------------------------------------------------- digits


def test_load_digits_backwards_compatible():
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits()
    images = ki.data.load_digits()
    np.testing.assert_array_equal(images[..., 0], raw.images / 16.0)
    images, labels = ki.data.load_digits("test", "uint8", True, 0)
    order = np.random.default_rng(0).permutation(1797)[int(0.8 * 1797) :]
    np.testing.assert_array_equal(labels, raw.target[order])
    np.testing.assert_array_equal(
        images[..., 0], np.round(raw.images[order] / 16.0 * 255)
    )


@pytest.mark.parametrize("size", [16, 32])
def test_load_digits_upsampled(size):
    import scipy.ndimage

    base = ki.data.load_digits(split="test")[..., 0]
    factor = size // 8
    nearest = ki.data.load_digits(split="test", image_size=size)
    assert nearest.shape == (len(base), size, size, 1)
    reference = np.stack([np.kron(b, np.ones((factor, factor))) for b in base])
    np.testing.assert_array_equal(nearest[..., 0], reference)
    # The block mean gives back the 8x8 images exactly.
    blocks = nearest[..., 0].reshape(-1, 8, factor, 8, factor).mean((2, 4))
    np.testing.assert_allclose(blocks, base, atol=1e-6)
    bilinear = ki.data.load_digits(
        split="test", image_size=size, interpolation="bilinear"
    )
    reference = np.stack(
        [
            scipy.ndimage.zoom(b, factor, order=1, grid_mode=True, mode="nearest")
            for b in base
        ]
    )
    np.testing.assert_allclose(bilinear[..., 0], reference, atol=1e-6)
    assert 0.0 <= bilinear.min() and bilinear.max() <= 1.0
    as_uint8 = ki.data.load_digits(
        split="test", dtype="uint8", image_size=size, interpolation="bilinear"
    )
    np.testing.assert_array_equal(as_uint8, np.round(bilinear * 255))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=24), "`image_size`"),
        (dict(image_size=16.0), "`image_size`"),
        (dict(interpolation="bicubic"), "`interpolation`"),
    ],
)
def test_load_digits_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ki.data.load_digits(**kwargs)


def test_digits_dataset():
    dataset = ki.data.digits_dataset(
        100, image_size=16, split="train", with_labels=True, seed=0
    )
    images, labels = ki.data.load_digits("train", return_labels=True, image_size=16)
    batches = _batches(dataset)
    assert len(batches) == len(images) // 100
    got, got_labels = batches[0]
    assert got.shape == (100, 16, 16, 1) and got_labels.dtype == np.int32
    # Every batch row is one of the digits, with its own label.
    flat = images.reshape(len(images), -1)
    for image, label in zip(got[:10], got_labels[:10]):
        match = np.flatnonzero((flat == image.reshape(-1)).all(axis=1))
        assert match.size and label in labels[match]


# --------------------------------------------------- import without tensorflow


def test_import_without_tensorflow():
    script = textwrap.dedent(
        """
        import importlib.abc
        import importlib.machinery
        import sys

        class Missing(importlib.abc.Loader):
            def create_module(self, spec):
                raise ImportError("No module named " + repr(spec.name))

            def exec_module(self, module):
                pass

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                    return importlib.machinery.ModuleSpec(name, Missing())
                return None

        sys.meta_path.insert(0, Block())
        import keras_immiscible as ki

        assert ki.data.load_digits(image_size=16).shape == (1797, 16, 16, 1)
        for call in (lambda: ki.data.load_cifar10(),
                     lambda: ki.data.from_numpy(ki.data.load_digits(), 8)):
            try:
                call()
            except ImportError as e:
                print("ERROR:", e)
        """
    )
    # The TensorFlow backend itself needs TensorFlow: check it with JAX.
    backend = keras.backend.backend()
    if backend == "tensorflow":
        backend = "jax"
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2
    assert "keras-immiscible[tfds" in errors[0]
    assert "tensorflow" in errors[1]


# ------------------------------------------------------- training with fit


def _tiny_model():
    network = ki.layers.UNet(
        image_shape=(8, 8, 3),
        widths=(8,),
        block_depth=1,
        embedding_dims=8,
    )
    # KNN assignment runs on the device and compiles on every backend (the
    # data pipelines are what is under test here).
    model = ki.ImmiscibleDiffusion(network, assignment="knn", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


@requires_tfds
def test_every_tfds_loader_trains_one_step():
    model = _tiny_model()
    with tfds.testing.mock_data(num_examples=8):
        datasets = {
            name: loader(batch_size=4, image_size=8, seed=0, flip=True)
            for name, loader in LOADERS.items()
        }
        for name, dataset in datasets.items():
            _check_one_step(model, dataset, name)


def test_local_loaders_train_one_step(tmp_path):
    rng = np.random.default_rng(13)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype="uint8")).save(
            tmp_path / f"{i}.png"
        )
    model = _tiny_model()
    datasets = {
        "from_directory": ki.data.from_directory(tmp_path, 8, batch_size=4, seed=0),
        # (`digits_dataset` is `from_numpy` on `load_digits`' arrays.)
        "from_numpy": ki.data.from_numpy(rng.uniform(0, 1, (8, 8, 8, 3)), 4, seed=0),
    }
    for name, dataset in datasets.items():
        _check_one_step(model, dataset, name)


def _check_one_step(model, dataset, name):
    before = [w.copy() for w in model.network.get_weights()]
    history = model.fit(dataset, steps_per_epoch=1, shuffle=False, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0, name
    after = model.network.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), name
