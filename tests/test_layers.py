import contextlib
import math

import keras
import numpy as np
import pytest

from keras_immiscible import layers

RNG = np.random.default_rng(1234)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


# ---------------------------------------------------------------------------
# Independent numpy references.
# ---------------------------------------------------------------------------


def np_sinusoidal(x, dims, min_f=1.0, max_f=1000.0):
    x = np.asarray(x, dtype="float32").reshape(-1, 1)
    freqs = np.exp(np.linspace(np.log(min_f), np.log(max_f), dims // 2))
    # The angles reach 2 * pi * max_f: form them in float32, as the layer
    # does, so that the comparison is not dominated by their rounding.
    angular_speeds = (2.0 * np.pi * freqs).astype("float32")
    angles = (angular_speeds[None, :] * x).astype("float64")
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def np_group_norm(x, groups, gamma, beta, eps=1e-3):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(b, h, w, c) * gamma + beta


def np_conv2d_same(x, kernel, bias):
    kh, kw = kernel.shape[:2]
    ph, pw = kh // 2, kw // 2
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum(
                "bhwc,cd->bhwd", padded[:, i : i + h, j : j + w], kernel[i, j]
            )
    return out + bias


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_residual_block(block, x, emb):
    w = lambda v: _np(v).astype("float64")  # noqa: E731
    h = np_group_norm(x, block.norm1.groups, w(block.norm1.gamma), w(block.norm1.beta))
    h = np_conv2d_same(np_silu(h), w(block.conv1.kernel), w(block.conv1.bias))
    h = np_group_norm(h, block.norm2.groups, w(block.norm2.gamma), w(block.norm2.beta))
    film = emb @ w(block.film.kernel) + w(block.film.bias)
    scale, shift = film[:, : block.width], film[:, block.width :]
    h = h * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = np_conv2d_same(np_silu(h), w(block.conv2.kernel), w(block.conv2.bias))
    if block.skip is None:
        skip = x
    else:
        skip = np_conv2d_same(x, w(block.skip.kernel), w(block.skip.bias))
    return h + skip


def np_attention_block(block, x):
    w = lambda v: _np(v).astype("float64")  # noqa: E731
    b, hh, ww, c = x.shape
    h = np_group_norm(x, block.norm.groups, w(block.norm.gamma), w(block.norm.beta))
    seq = h.reshape(b, hh * ww, c)
    mha = block.attention
    q = np.einsum("bsc,cnk->bsnk", seq, w(mha.query_dense.kernel))
    q = q + w(mha.query_dense.bias)
    k = np.einsum("bsc,cnk->bsnk", seq, w(mha.key_dense.kernel))
    k = k + w(mha.key_dense.bias)
    v = np.einsum("bsc,cnk->bsnk", seq, w(mha.value_dense.kernel))
    v = v + w(mha.value_dense.bias)
    logits = np.einsum("bqnk,bsnk->bnqs", q, k) / math.sqrt(q.shape[-1])
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    att = np.einsum("bnqs,bsnk->bqnk", probs, v)
    out = np.einsum("bqnk,nkc->bqc", att, w(mha.output_dense.kernel))
    out = out + w(mha.output_dense.bias)
    return x + out.reshape(b, hh, ww, c)


def _randomize_weights(layer, scale=0.3, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [
            w + scale * rng.normal(size=w.shape).astype(w.dtype)
            for w in layer.get_weights()
        ]
    )


@contextlib.contextmanager
def _randomized(model, scale=0.3, seed=0):
    original = model.get_weights()
    _randomize_weights(model, scale=scale, seed=seed)
    try:
        yield model
    finally:
        model.set_weights(original)


# ---------------------------------------------------------------------------
# SinusoidalEmbedding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (5, 1), (5, 1, 1, 1)])
def test_sinusoidal_embedding_matches_numpy(shape):
    x = RNG.uniform(size=shape).astype("float32")
    layer = layers.SinusoidalEmbedding(16)
    out = _np(layer(x))
    assert out.shape == (5, 16)
    np.testing.assert_allclose(out, np_sinusoidal(x, 16), atol=1e-5)
    assert layer.weights == []


def test_sinusoidal_embedding_custom_frequencies():
    x = np.array([0.0, 0.25, 0.5], dtype="float32")
    layer = layers.SinusoidalEmbedding(8, min_frequency=0.5, max_frequency=4.0)
    expected = np_sinusoidal(x, 8, 0.5, 4.0)
    np.testing.assert_allclose(_np(layer(x)), expected, atol=1e-5)
    # At x = 0: sines are 0 and cosines are 1.
    np.testing.assert_allclose(_np(layer(x))[0], [0] * 4 + [1] * 4, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"embedding_dims": 7},
        {"embedding_dims": 0},
        {"embedding_dims": -4},
        {"min_frequency": 0.0},
        {"min_frequency": 10.0, "max_frequency": 1.0},
    ],
)
def test_sinusoidal_embedding_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        layers.SinusoidalEmbedding(**kwargs)


def test_sinusoidal_embedding_bad_input_shape():
    with pytest.raises(ValueError, match="one value per sample"):
        layers.SinusoidalEmbedding(8)(np.zeros((3, 2), "float32"))


# ---------------------------------------------------------------------------
# ResidualBlock
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels,width", [(4, 8), (8, 8)])
def test_residual_block_matches_numpy(in_channels, width):
    x = _normal(2, 4, 4, in_channels)
    emb = _normal(2, 6)
    block = layers.ResidualBlock(width, groups=2)
    block([x, emb])
    _randomize_weights(block)
    assert (block.skip is None) == (in_channels == width)
    out = _np(block([x, emb]))
    assert out.shape == (2, 4, 4, width)
    expected = np_residual_block(block, x.astype("float64"), emb)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_residual_block_film_conditions():
    x = _normal(2, 4, 4, 8)
    emb_a, emb_b = _normal(2, 6), _normal(2, 6)
    block = layers.ResidualBlock(8, groups=4)
    out_a = _np(block([x, emb_a]))
    out_b = _np(block([x, emb_b]))
    assert np.abs(out_a - out_b).mean() > 1e-2
    # With a zero FiLM projection the embedding no longer matters.
    block.film.kernel.assign(np.zeros(block.film.kernel.shape, "float32"))
    block.film.bias.assign(np.zeros(block.film.bias.shape, "float32"))
    np.testing.assert_allclose(
        _np(block([x, emb_a])), _np(block([x, emb_b])), atol=1e-6
    )
    # And a pure shift moves the pre-conv2 features: shift per channel only.
    bias = np.zeros(block.film.bias.shape, "float32")
    bias[8:] = 1.0
    block.film.bias.assign(bias)
    assert np.abs(_np(block([x, emb_a])) - out_a).mean() > 1e-3


def test_residual_block_group_fallback():
    # 12 channels are not divisible by 8 groups: the largest divisor below
    # 8 is used. (The input-side fallback is checked in the UpBlock test.)
    assert layers.ResidualBlock(12, groups=8).norm2.groups == 6
    assert layers.ResidualBlock(16, groups=8).norm2.groups == 8
    assert layers.ResidualBlock(7, groups=8).norm2.groups == 7


def test_residual_block_batch_norm_option_and_dropout():
    x, emb = _normal(4, 4, 4, 8), _normal(4, 6)
    block = layers.ResidualBlock(8, groups=None, dropout=0.5)
    inference_1 = _np(block([x, emb], training=False))
    inference_2 = _np(block([x, emb], training=False))
    np.testing.assert_array_equal(inference_1, inference_2)
    training = _np(block([x, emb], training=True))
    assert np.abs(training - inference_1).mean() > 1e-3
    assert isinstance(block.norm1, keras.layers.BatchNormalization)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"width": -1}, ValueError),
        ({"width": 0}, ValueError),
        ({"width": 2.5}, TypeError),
        ({"width": 8, "groups": 0}, ValueError),
        ({"width": 8, "dropout": 1.0}, ValueError),
        ({"width": 8, "dropout": -0.1}, ValueError),
    ],
)
def test_residual_block_bad_arguments(kwargs, error):
    with pytest.raises(error):
        layers.ResidualBlock(**kwargs)


def test_residual_block_requires_list():
    with pytest.raises(ValueError, match=r"\[x, emb\]"):
        layers.ResidualBlock(8)(_normal(1, 4, 4, 8))


# ---------------------------------------------------------------------------
# AttentionBlock
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_block_matches_numpy(num_heads):
    x = _normal(2, 4, 4, 8)
    block = layers.AttentionBlock(num_heads=num_heads, groups=4)
    block(x)
    _randomize_weights(block)
    out = _np(block(x))
    assert out.shape == x.shape
    np.testing.assert_allclose(
        out, np_attention_block(block, x.astype("float64")), atol=1e-4
    )
    assert block.attention.key_dense.kernel.shape == (
        8,
        num_heads,
        8 // num_heads,
    )


def test_attention_block_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        layers.AttentionBlock(num_heads=0)
    with pytest.raises(ValueError, match="key_dim"):
        layers.AttentionBlock(key_dim=-3)


# ---------------------------------------------------------------------------
# DownBlock / UpBlock
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [False, True])
def test_down_block_composition(attention):
    x, emb = _normal(2, 4, 4, 8), _normal(2, 6)
    block = layers.DownBlock(8, block_depth=2, attention=attention, groups=4)
    outputs = block([x, emb])
    assert isinstance(outputs, (list, tuple)) and len(outputs) == 3
    x_down, skip_1, skip_2 = (_np(o) for o in outputs)
    assert x_down.shape == (2, 2, 2, 8)
    assert skip_1.shape == skip_2.shape == (2, 4, 4, 8)
    # Manual composition of the sub-blocks.
    h = block.residual_blocks[0]([x, emb])
    if attention:
        h = block.attention_blocks[0](h)
    np.testing.assert_allclose(skip_1, _np(h), atol=1e-5)
    h = block.residual_blocks[1]([h, emb])
    if attention:
        h = block.attention_blocks[1](h)
    np.testing.assert_allclose(skip_2, _np(h), atol=1e-5)
    # 2x2 average pooling of the last skip.
    pooled = skip_2.reshape(2, 2, 2, 2, 2, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(x_down, pooled, atol=1e-5)


def test_down_block_strided_conv():
    block = layers.DownBlock(8, block_depth=1, downsample="conv")
    x_down, skip = block([_normal(2, 4, 4, 8), _normal(2, 6)])
    assert tuple(x_down.shape) == (2, 2, 2, 8)
    assert tuple(skip.shape) == (2, 4, 4, 8)


def test_up_block_uses_skips_in_reverse_order():
    x, emb = _normal(2, 2, 2, 8), _normal(2, 6)
    # Different channel counts make the order observable.
    skip_1, skip_2 = _normal(2, 4, 4, 2), _normal(2, 4, 4, 4)
    block = layers.UpBlock(
        8, block_depth=2, attention=True, groups=4, interpolation="nearest"
    )
    out = _np(block([x, emb, skip_1, skip_2]))
    assert out.shape == (2, 4, 4, 8)
    upsampled = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    h = np.concatenate([upsampled, skip_2], axis=-1)
    h = block.attention_blocks[0](block.residual_blocks[0]([h, emb]))
    h = np.concatenate([_np(h), skip_1], axis=-1)
    h = block.attention_blocks[1](block.residual_blocks[1]([h, emb]))
    np.testing.assert_allclose(out, _np(h), atol=1e-5)
    # Group fallback on the concatenated inputs: 8 + 4 = 12 channels are
    # divisible by 4 groups, 8 + 2 = 10 channels fall back to 2 groups.
    assert block.residual_blocks[0].norm1.groups == 4
    assert block.residual_blocks[1].norm1.groups == 2


def test_up_block_wrong_number_of_skips():
    block = layers.UpBlock(8, block_depth=2)
    with pytest.raises(ValueError, match="block_depth"):
        block([_normal(1, 2, 2, 8), _normal(1, 6), _normal(1, 4, 4, 8)])


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (layers.DownBlock, {"width": 8, "block_depth": 0}),
        (layers.DownBlock, {"width": -8, "block_depth": 1}),
        (layers.DownBlock, {"width": 8, "block_depth": 1, "downsample": "max"}),
        (layers.UpBlock, {"width": 0, "block_depth": 1}),
        (layers.UpBlock, {"width": 8, "block_depth": 1, "interpolation": "x"}),
        (layers.UpBlock, {"width": 8, "block_depth": 1, "dropout": 2.0}),
    ],
)
def test_blocks_bad_arguments(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


# ---------------------------------------------------------------------------
# get_config / from_config round trips
# ---------------------------------------------------------------------------

_EMB = _normal(2, 6)
_ROUND_TRIP_CASES = [
    (
        layers.SinusoidalEmbedding,
        {"embedding_dims": 10, "min_frequency": 2.0, "max_frequency": 50.0},
        lambda: RNG.uniform(size=(2, 1, 1, 1)).astype("float32"),
    ),
    (
        layers.ResidualBlock,
        {"width": 8, "groups": 4, "dropout": 0.1},
        lambda: [_normal(2, 4, 4, 4), _EMB],
    ),
    (
        layers.ResidualBlock,
        {"width": 8, "groups": None},
        lambda: [_normal(2, 4, 4, 8), _EMB],
    ),
    (
        layers.AttentionBlock,
        {"num_heads": 2, "key_dim": 3, "groups": 2},
        lambda: _normal(2, 4, 4, 8),
    ),
    (
        layers.DownBlock,
        {"width": 8, "block_depth": 2, "attention": True, "downsample": "conv"},
        lambda: [_normal(2, 4, 4, 8), _EMB],
    ),
    (
        layers.UpBlock,
        {"width": 8, "block_depth": 2, "attention": True, "dropout": 0.2},
        lambda: [
            _normal(2, 2, 2, 8),
            _EMB,
            _normal(2, 4, 4, 8),
            _normal(2, 4, 4, 8),
        ],
    ),
]


@pytest.mark.parametrize(
    "cls,kwargs,make_inputs",
    _ROUND_TRIP_CASES,
    ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(_ROUND_TRIP_CASES)],
)
def test_config_round_trip(cls, kwargs, make_inputs):
    inputs = make_inputs()
    layer = cls(**kwargs)
    layer(inputs)
    _randomize_weights(layer)
    config = layer.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    restored = cls.from_config(config)
    restored(inputs)
    restored.set_weights(layer.get_weights())
    expected = keras.tree.map_structure(_np, layer(inputs))
    actual = keras.tree.map_structure(_np, restored(inputs))
    keras.tree.assert_same_structure(expected, actual)
    for e, a in zip(
        keras.tree.flatten(expected), keras.tree.flatten(actual), strict=True
    ):
        np.testing.assert_allclose(a, e, atol=1e-6)
    # Also through the generic Keras (de)serialization.
    generic = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(generic) is cls
    assert generic.get_config() == config


# ---------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------

IMAGE_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def unet():
    return layers.UNet(
        IMAGE_SHAPE, widths=(16, 32), block_depth=1, attention_resolutions=(4,)
    )


@pytest.fixture(scope="module")
def class_unet():
    return layers.UNet(
        IMAGE_SHAPE,
        widths=(16, 32),
        block_depth=1,
        attention_resolutions=(4,),
        num_classes=10,
        name="class_unet",
    )


def _unet_inputs(batch=3, labels=False):
    rng = np.random.default_rng(7)
    inputs = [
        rng.normal(size=(batch,) + IMAGE_SHAPE).astype("float32"),
        rng.uniform(size=(batch, 1, 1, 1)).astype("float32"),
    ]
    if labels:
        inputs.append(np.array([0, 3, 10][:batch], dtype="int32"))
    return inputs


def test_unet_structure(unet, class_unet):
    assert len(unet.inputs) == 2
    assert len(class_unet.inputs) == 3
    assert tuple(unet.output.shape) == (None,) + IMAGE_SHAPE
    names = [layer.__class__.__name__ for layer in unet.layers]
    assert names.count("DownBlock") == 1
    assert names.count("UpBlock") == 1
    assert names.count("AttentionBlock") == 1  # only at resolution 4
    assert not unet.get_layer("down_block_0").attention
    assert class_unet.get_layer("class_embedding").input_dim == 11


def test_unet_starts_at_zero_through_its_output_layer(unet, class_unet):
    # The UNet starts as the zero function (the keras.io DDIM recipe) only
    # because its last 1x1 convolution starts at zero: the features reaching
    # it are not, so one gradient step moves the output.
    for model, labels in ((unet, False), (class_unet, True)):
        output_conv = model.get_layer("output_conv")
        assert not _np(output_conv.kernel).any()
        assert not _np(output_conv.bias).any()
        features = keras.Model(model.inputs, output_conv.input)
        hidden = _np(features(_unet_inputs(labels=labels)))
        assert hidden.shape == (3,) + IMAGE_SHAPE[:2] + (16,)
        assert hidden.std() > 1e-2
        # Each output channel is the projection of those features.
        with _randomized(model, seed=4):
            out = _np(model(_unet_inputs(labels=labels)))
            hidden = _np(features(_unet_inputs(labels=labels)))
            kernel = _np(output_conv.kernel)[0, 0]
            bias = _np(output_conv.bias)
        np.testing.assert_allclose(out, hidden @ kernel + bias, atol=1e-4)


def test_unet_conditions_on_noise_level_and_labels(class_unet):
    images, noise_level, labels = _unet_inputs(labels=True)
    with _randomized(class_unet):
        base = _np(class_unet([images, noise_level, labels]))
        other_level = _np(class_unet([images, noise_level + 0.3, labels]))
        other_labels = _np(class_unet([images, noise_level, labels[::-1]]))
    assert np.abs(base).mean() > 1e-3
    assert np.abs(base - other_level).mean() > 1e-4
    # Sample 1 keeps its label (3); samples 0 and 2 swap 0 <-> 10.
    assert np.abs(base[0] - other_labels[0]).mean() > 1e-4
    np.testing.assert_allclose(base[1], other_labels[1], atol=1e-6)


@pytest.mark.parametrize("fixture_name", ["unet", "class_unet"])
def test_unet_save_and_load(fixture_name, request, tmp_path):
    model = request.getfixturevalue(fixture_name)
    inputs = _unet_inputs(labels=fixture_name == "class_unet")
    path = str(tmp_path / f"{fixture_name}.keras")
    with _randomized(model, seed=3):
        expected = _np(model(inputs))
        model.save(path)
    assert np.abs(expected).mean() > 1e-3  # a non-trivial comparison
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_np(loaded(inputs)), expected, atol=1e-6)


def test_unet_larger_image():
    model = layers.UNet(
        (32, 32, 3),
        widths=(16, 32, 32, 32),
        block_depth=1,
        attention_resolutions=(8, 4),
    )
    names = [layer.name for layer in model.layers]
    assert "middle_attention_block_0" in names
    assert model.get_layer("down_block_2").attention
    assert model.get_layer("up_block_0").attention
    assert not model.get_layer("down_block_0").attention
    x = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype("float32")
    level = np.full((2, 1, 1, 1), 0.5, "float32")
    with _randomized(model, seed=5):
        out = _np(model([x, level]))
        # The network mixes space: changing one corner pixel changes the
        # output far from it (through the down/up path and attention).
        x2 = x.copy()
        x2[:, 0, 0, :] += 1.0
        moved = _np(model([x2, level]))
    assert out.shape == (2, 32, 32, 3) and np.all(np.isfinite(out))
    assert np.abs(out).mean() > 1e-3
    assert np.abs(moved - out)[:, 24:, 24:, :].max() > 1e-5


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"widths": ()}, ValueError, "widths"),
        ({"widths": (16, -32)}, ValueError, "widths"),
        (
            {"image_shape": (6, 6, 1), "widths": (8, 8, 8)},
            ValueError,
            "divisible",
        ),
        ({"image_shape": (8, 8)}, ValueError, "image_shape"),
        ({"image_shape": (8, -8, 1)}, ValueError, "image_shape"),
        ({"block_depth": 0}, ValueError, "block_depth"),
        ({"attention_resolutions": (16,)}, ValueError, "attention_resolutions"),
        (
            {"attention_resolutions": ("4",)},
            ValueError,
            "attention_resolutions",
        ),
        ({"embedding_dims": 15}, ValueError, "embedding_dims"),
        ({"dropout": 1.5}, ValueError, "dropout"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"widths": 16}, TypeError, "widths"),
    ],
)
def test_unet_bad_arguments(kwargs, error, match):
    arguments = {"image_shape": (8, 8, 1), "widths": (16, 32), "block_depth": 1}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        layers.UNet(**arguments)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda: layers.ResidualBlock(0),
            ValueError,
            "`width` must be a positive int, got 0.",
        ),
        (
            lambda: layers.ResidualBlock(8, groups="8"),
            TypeError,
            "`groups` must be None or a positive int, got '8'.",
        ),
        (
            lambda: layers.ResidualBlock(8, dropout=1.0),
            ValueError,
            "`dropout` must be a number in [0, 1), got 1.0.",
        ),
        (
            lambda: layers.AttentionBlock(key_dim=0),
            ValueError,
            "`key_dim` must be None or a positive int, got 0.",
        ),
        (
            lambda: layers.SinusoidalEmbedding(7),
            ValueError,
            "`embedding_dims` must be a positive even int, got 7.",
        ),
        (
            lambda: layers.SinusoidalEmbedding(8, min_frequency=0),
            ValueError,
            "`min_frequency` must be a number > 0, got 0.",
        ),
        (
            lambda: layers.SinusoidalEmbedding(8, min_frequency=4.0, max_frequency=2.0),
            ValueError,
            "`max_frequency` must be a number >= 4, got 2.0.",
        ),
    ],
)
def test_layer_argument_messages(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert str(info.value) == message
