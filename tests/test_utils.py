"""Tests of `keras_immiscible.utils`: PNG files and the argument checks."""

import io

import numpy as np
import pytest

from keras_immiscible.utils import images as image_utils

Image = pytest.importorskip("PIL.Image")


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_png_round_trip_every_channel_count(tmp_path, channels, mode):
    image = np.random.default_rng(channels).integers(
        0, 256, (5, 7, channels), dtype="uint8"
    )
    path = image_utils.write_png(tmp_path / "a" / "x.png", image)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == mode
        decoded = np.asarray(png).reshape(5, 7, channels)
    np.testing.assert_array_equal(decoded, image)
    with Image.open(io.BytesIO(image_utils.encode_png(image))) as png:
        np.testing.assert_array_equal(np.asarray(png).reshape(5, 7, channels), image)


def test_png_refuses_bad_images(tmp_path):
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels, got \(2, 2, 2\)"):
        image_utils.write_png(tmp_path / "x.png", np.zeros((2, 2, 2), "uint8"))
    with pytest.raises(TypeError, match="`image` must be uint8, got dtype float32"):
        image_utils.encode_png(np.zeros((2, 2, 3), "float32"))
    assert not list(tmp_path.iterdir())
