"""Tests of `keras_immiscible.utils`: PNG files and the argument checks."""

import numpy as np
import pytest

from keras_immiscible.utils import arguments
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


def test_png_refuses_bad_images(tmp_path):
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels, got \(2, 2, 2\)"):
        image_utils.write_png(tmp_path / "x.png", np.zeros((2, 2, 2), "uint8"))
    with pytest.raises(TypeError, match="`image` must be uint8, got dtype float32"):
        image_utils.write_png(tmp_path / "x.png", np.zeros((2, 2, 3), "float32"))
    assert not list(tmp_path.iterdir())


def test_grid_argument_messages():
    images = np.zeros((2, 3, 3, 1), "uint8")
    for kwargs, message in [
        (dict(scale=0), "`scale` must be a positive int, got 0."),
        (dict(padding=-1), "`padding` must be a non-negative int, got -1."),
        (dict(num_rows=1.5), "`num_rows` must be a positive int, got 1.5."),
    ]:
        with pytest.raises(ValueError) as info:
            image_utils.make_image_grid(images, **kwargs)
        assert str(info.value) == message
    assert image_utils.make_image_grid(images, num_rows=np.int64(2)).shape == (9, 5, 1)


# --------------------------------------------------------------- arguments


def _raises(error, message, check, *args, **kwargs):
    """`check` raises exactly `error` with exactly `message`."""
    with pytest.raises(error) as info:
        check(*args, **kwargs)
    assert type(info.value) is error
    assert str(info.value) == message


def test_check_int():
    assert arguments.check_int(np.int64(3), "n") == 3
    assert type(arguments.check_int(np.int64(3), "n")) is int
    assert arguments.check_int(-4, "n") == -4
    assert arguments.check_int(0, "n", minimum=0) == 0
    assert arguments.check_int(None, "n", allow_none=True) is None
    type_error = arguments.ArgumentTypeError
    _raises(type_error, "`n` must be an int, got 2.0.", arguments.check_int, 2.0, "n")
    _raises(
        type_error,
        "`n` must be a positive int, got True.",
        arguments.check_positive_int,
        True,
        "n",
    )
    _raises(
        type_error,
        "`n` must be a positive int, got None.",
        arguments.check_positive_int,
        None,
        "n",
    )
    _raises(
        type_error,
        "`n` must be a positive int, got '3'.",
        arguments.check_positive_int,
        "3",
        "n",
    )
    _raises(
        ValueError,
        "`n` must be a positive int, got 0.",
        arguments.check_positive_int,
        0,
        "n",
    )
    _raises(
        ValueError,
        "`n` must be a non-negative int, got -1.",
        arguments.check_int,
        -1,
        "n",
        minimum=0,
    )
    _raises(
        ValueError,
        "`n` must be an int >= 5, got 4.",
        arguments.check_int,
        4,
        "n",
        minimum=5,
    )
    _raises(
        ValueError,
        "`n` must be None or a positive int, got -2.",
        arguments.check_positive_int,
        -2,
        "n",
        allow_none=True,
    )
    # A wrong type is both a TypeError and a ValueError.
    assert issubclass(type_error, TypeError)
    assert issubclass(type_error, ValueError)


def test_check_number():
    assert arguments.check_number(np.float32(0.5), "x") == 0.5
    assert type(arguments.check_number(2, "x")) is float
    assert arguments.check_number(0, "x", low=0, high=1) == 0.0
    assert arguments.check_number(1, "x", low=0, high=1) == 1.0
    assert arguments.check_number(None, "x", allow_none=True) is None
    type_error = arguments.ArgumentTypeError
    _raises(
        type_error,
        "`x` must be a finite number, got 'a'.",
        arguments.check_number,
        "a",
        "x",
    )
    _raises(
        type_error,
        "`x` must be a finite number, got False.",
        arguments.check_number,
        False,
        "x",
    )
    _raises(
        ValueError,
        "`x` must be a finite number, got nan.",
        arguments.check_number,
        float("nan"),
        "x",
    )
    _raises(
        ValueError,
        "`x` must be a number >= 0, got inf.",
        arguments.check_number,
        float("inf"),
        "x",
        low=0,
    )
    _raises(
        ValueError,
        "`x` must be a number > 0, got 0.",
        arguments.check_number,
        0,
        "x",
        low=0,
        low_open=True,
    )
    _raises(
        ValueError,
        "`x` must be a number < 2, got 2.",
        arguments.check_number,
        2,
        "x",
        high=2,
        high_open=True,
    )
    _raises(
        ValueError,
        "`x` must be a number <= 2, got 2.5.",
        arguments.check_number,
        2.5,
        "x",
        high=2,
    )
    _raises(
        ValueError,
        "`x` must be a number in (0, 1], got 0.0.",
        arguments.check_number,
        0.0,
        "x",
        low=0,
        high=1,
        low_open=True,
    )
    _raises(
        ValueError,
        "`x` must be None or a number in [0.5, 1], got 0.25.",
        arguments.check_number,
        0.25,
        "x",
        low=0.5,
        high=1,
        allow_none=True,
    )


def test_check_probability():
    assert arguments.check_probability(1, "p") == 1.0
    assert arguments.check_probability(0.0, "p", allow_one=False) == 0.0
    _raises(
        ValueError,
        "`p` must be a number in [0, 1), got 1.0.",
        arguments.check_probability,
        1.0,
        "p",
        allow_one=False,
    )
    _raises(
        ValueError,
        "`p` must be a number in [0, 1], got -0.1.",
        arguments.check_probability,
        -0.1,
        "p",
    )


def test_check_bool_choice_callable_seed():
    assert arguments.check_bool(np.bool_(True), "flag") is True
    _raises(
        arguments.ArgumentTypeError,
        "`flag` must be True or False, got 1.",
        arguments.check_bool,
        1,
        "flag",
    )
    assert arguments.check_choice(None, "crop", ("center", None)) is None
    assert arguments.check_choice("center", "crop", ("center", None)) == "center"
    assert arguments.check_choice(np.int64(16), "size", (8, 16)) == 16
    assert arguments.check_choice(np.str_("a"), "s", ("a", "b")) == "a"
    _raises(
        ValueError,
        "`size` must be one of (8, 16), got 16.0.",
        arguments.check_choice,
        16.0,
        "size",
        (8, 16),
    )
    _raises(
        ValueError,
        "`size` must be one of (0, 1), got True.",
        arguments.check_choice,
        True,
        "size",
        (0, 1),
    )
    _raises(
        ValueError,
        "`crop` must be one of ('center', None), got 'middle'.",
        arguments.check_choice,
        "middle",
        "crop",
        ("center", None),
    )
    _raises(
        ValueError,
        "`k` must be one of (1, 2), got 1.0.",
        arguments.check_choice,
        1.0,
        "k",
        (1, 2),
    )
    _raises(
        ValueError,
        "`k` must be one of (1, 2), got array([1, 2]).",
        arguments.check_choice,
        np.array([1, 2]),
        "k",
        (1, 2),
    )
    assert arguments.check_callable(len, "fn") is len
    _raises(
        arguments.ArgumentTypeError,
        "`fn` must be callable, got 3.",
        arguments.check_callable,
        3,
        "fn",
    )
    assert arguments.check_seed(None) is None
    assert arguments.check_seed(np.int32(7)) == 7
    _raises(
        arguments.ArgumentTypeError,
        "`seed` must be None or an int, got 1.5.",
        arguments.check_seed,
        1.5,
    )
