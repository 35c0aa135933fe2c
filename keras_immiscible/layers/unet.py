"""Configurable, time-conditioned UNet for diffusion models."""

import keras
import numpy as np

from keras_immiscible.layers.attention_block import AttentionBlock
from keras_immiscible.layers.down_block import DownBlock
from keras_immiscible.layers.normalization import make_norm
from keras_immiscible.layers.residual_block import ResidualBlock
from keras_immiscible.layers.sinusoidal_embedding import SinusoidalEmbedding
from keras_immiscible.layers.up_block import UpBlock
from keras_immiscible.utils.arguments import check_positive_int
from keras_immiscible.utils.arguments import check_probability


def _is_positive_int(value):
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, bool)
        and value > 0
    )


def UNet(
    image_shape,
    widths=(32, 64, 96, 128),
    block_depth=2,
    attention_resolutions=(),
    embedding_dims=32,
    dropout=0.0,
    num_classes=None,
    name="unet",
    *,
    groups=8,
    num_heads=1,
):
    """Builds a time-conditioned UNet denoiser as a functional `keras.Model`.

    The architecture follows the keras.io "Denoising Diffusion Implicit
    Models" example, made configurable, with the noise level injected into
    every residual block (FiLM scale and shift) rather than only at the
    input:

    - the noise level goes through a `SinusoidalEmbedding` and a two-layer
      MLP (`Dense` + swish, `Dense`) of size `4 * widths[0]`; with
      `num_classes`, a learned class embedding is added to it; a final swish
      gives the conditioning vector `emb` shared by all blocks;
    - a 1x1 convolution maps the image to `widths[0]` channels;
    - one `DownBlock` per width in `widths[:-1]` (each halves the
      resolution);
    - `block_depth` `ResidualBlock`s of width `widths[-1]` at the lowest
      resolution;
    - one `UpBlock` per width in `reversed(widths[:-1])`, each consuming the
      skips of the matching `DownBlock`;
    - a normalization, a swish and a 1x1 convolution to the image's channels.
      That convolution is initialized to zeros, so an untrained network
      predicts exactly zero.

    Args:
        image_shape: tuple `(H, W, C)` of the images. `H` and `W` must be
            divisible by `2 ** (len(widths) - 1)`.
        widths: sequence of positive ints, the number of channels at each
            resolution, from the highest to the lowest resolution.
        block_depth: int. Number of residual blocks per resolution.
        attention_resolutions: sequence of ints. Spatial sizes (the
            feature-map height, which equals its width for square images) at
            which every residual block is followed by an `AttentionBlock`,
            e.g. `(16, 8)`. Each must be one of the UNet's resolutions
            `H, H / 2, ..., H / 2 ** (len(widths) - 1)`.
        embedding_dims: int. Size of the sinusoidal noise-level embedding
            (positive, even).
        dropout: float in [0, 1). Dropout rate of the residual blocks.
        num_classes: None or int. When an int, the model takes a third input
            `labels` of shape `(B,)` and dtype int32 with values in
            `[0, num_classes]`: labels `0 ... num_classes - 1` are the
            classes, and the extra index `num_classes` is reserved for
            "no class" (unconditional), e.g. for classifier-free guidance.
            The embedding table therefore has `num_classes + 1` rows.
        name: str. Name of the model.
        groups: int or None (keyword only). Normalization groups, see
            `ResidualBlock`.
        num_heads: int (keyword only). Number of heads of the attention
            blocks.

    Returns:
        A `keras.Model` with inputs `[noisy_images, noise_level]` (shapes
        `(B, H, W, C)` and `(B, 1, 1, 1)`), or
        `[noisy_images, noise_level, labels]` when `num_classes` is set, and
        an output of shape `(B, H, W, C)`.

    Example:

    ```python
    model = keras_immiscible.layers.UNet(
        (32, 32, 3), widths=(32, 64, 96), block_depth=2,
        attention_resolutions=(8,),
    )
    images = np.random.normal(size=(4, 32, 32, 3)).astype("float32")
    noise_level = np.random.uniform(size=(4, 1, 1, 1)).astype("float32")
    model([images, noise_level]).shape  # (4, 32, 32, 3)
    ```
    """
    if (
        not isinstance(image_shape, (list, tuple))
        or len(image_shape) != 3
        or not all(_is_positive_int(d) for d in image_shape)
    ):
        raise ValueError(
            "`image_shape` must be a tuple (height, width, channels) of "
            f"positive ints. Received: image_shape={image_shape!r}"
        )
    height, width, channels = (int(d) for d in image_shape)
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__"):
        raise TypeError(
            f"`widths` must be a sequence of positive ints. Received: widths={widths!r}"
        )
    if len(widths) == 0 or not all(_is_positive_int(w) for w in widths):
        raise ValueError(
            "`widths` must be a non-empty sequence of positive ints. "
            f"Received: widths={widths!r}"
        )
    widths = tuple(int(w) for w in widths)
    block_depth = check_positive_int(block_depth, "block_depth")
    embedding_dims = check_positive_int(embedding_dims, "embedding_dims")
    if embedding_dims % 2:
        raise ValueError(
            f"`embedding_dims` must be even. Received: embedding_dims={embedding_dims}"
        )
    dropout = check_probability(dropout, "dropout", allow_one=False)
    groups = check_positive_int(groups, "groups", allow_none=True)
    num_heads = check_positive_int(num_heads, "num_heads")
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes")

    factor = 2 ** (len(widths) - 1)
    if height % factor or width % factor:
        raise ValueError(
            "The image height and width must be divisible by "
            f"2 ** (len(widths) - 1) = {factor}. Received: "
            f"image_shape={tuple(image_shape)}, widths={widths}"
        )
    resolutions = [height // 2**i for i in range(len(widths))]
    if _is_positive_int(attention_resolutions):
        attention_resolutions = (attention_resolutions,)
    if not all(_is_positive_int(r) for r in attention_resolutions):
        raise ValueError(
            "`attention_resolutions` must be a sequence of positive ints. "
            f"Received: attention_resolutions={attention_resolutions!r}"
        )
    attention_resolutions = tuple(int(r) for r in attention_resolutions)
    for resolution in attention_resolutions:
        if resolution not in resolutions:
            raise ValueError(
                f"`attention_resolutions` contains {resolution}, which is "
                f"not one of the UNet's resolutions {resolutions}. Received: "
                f"attention_resolutions={attention_resolutions}"
            )

    time_dims = 4 * widths[0]
    noisy_images = keras.Input(shape=(height, width, channels), name="noisy_images")
    noise_level = keras.Input(shape=(1, 1, 1), name="noise_level")
    inputs = [noisy_images, noise_level]

    emb = SinusoidalEmbedding(embedding_dims, name="noise_embedding")(noise_level)
    emb = keras.layers.Dense(time_dims, activation="silu", name="time_mlp_1")(emb)
    emb = keras.layers.Dense(time_dims, name="time_mlp_2")(emb)
    if num_classes is not None:
        labels = keras.Input(shape=(), dtype="int32", name="labels")
        inputs.append(labels)
        class_emb = keras.layers.Embedding(
            num_classes + 1, time_dims, name="class_embedding"
        )(labels)
        emb = keras.layers.Add(name="add_class_embedding")([emb, class_emb])
    emb = keras.layers.Activation("silu", name="time_embedding")(emb)

    x = keras.layers.Conv2D(widths[0], 1, name="stem")(noisy_images)

    skips = []
    resolution = height
    for i, w in enumerate(widths[:-1]):
        outputs = DownBlock(
            w,
            block_depth,
            attention=resolution in attention_resolutions,
            dropout=dropout,
            groups=groups,
            num_heads=num_heads,
            name=f"down_block_{i}",
        )([x, emb])
        x = outputs[0]
        skips.append(outputs[1:])
        resolution //= 2

    for i in range(block_depth):
        x = ResidualBlock(
            widths[-1],
            groups=groups,
            dropout=dropout,
            name=f"middle_residual_block_{i}",
        )([x, emb])
        if resolution in attention_resolutions:
            x = AttentionBlock(
                num_heads=num_heads,
                groups=groups,
                name=f"middle_attention_block_{i}",
            )(x)

    for i, w in enumerate(reversed(widths[:-1])):
        resolution *= 2
        x = UpBlock(
            w,
            block_depth,
            attention=resolution in attention_resolutions,
            dropout=dropout,
            groups=groups,
            num_heads=num_heads,
            name=f"up_block_{i}",
        )([x, emb, *skips.pop()])

    x = make_norm(widths[0], groups, "output_norm")(x)
    x = keras.layers.Activation("silu", name="output_activation")(x)
    outputs = keras.layers.Conv2D(
        channels, 1, kernel_initializer="zeros", name="output_conv"
    )(x)
    return keras.Model(inputs, outputs, name=name)
