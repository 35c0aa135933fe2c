"""UNet encoder stage: residual blocks then 2x downsampling."""

import keras

from keras_immiscible.layers.attention_block import AttentionBlock
from keras_immiscible.layers.residual_block import ResidualBlock
from keras_immiscible.utils.arguments import check_positive_int
from keras_immiscible.utils.arguments import check_probability

_DOWNSAMPLE_MODES = ("average", "conv")


@keras.saving.register_keras_serializable(package="keras_immiscible")
class DownBlock(keras.layers.Layer):
    """Encoder stage of a UNet.

    Applies `block_depth` time-conditioned `ResidualBlock`s (each followed by
    an `AttentionBlock` when `attention=True`) at the input resolution, keeps
    the output of each of them as a skip connection, and then halves the
    spatial resolution.

    Args:
        width: int. Number of channels of the residual blocks (and of the
            output).
        block_depth: int. Number of residual blocks (and skip connections).
        attention: bool. Whether to follow each residual block with an
            `AttentionBlock`.
        dropout: float in [0, 1). Dropout rate of the residual blocks.
        groups: int or None. Normalization groups, see `ResidualBlock`.
        num_heads: int. Number of attention heads when `attention=True`.
        downsample: `"average"` for a 2x2 average pooling or `"conv"` for a
            3x3 convolution with stride 2.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: list `[x, emb]` with `x` of shape `(B, H, W, C)` (`H` and `W`
            even) and `emb` of shape `(B, E)`.
        training: bool. Whether dropout and normalization run in training
            mode.

    Returns:
        List `[x_downsampled, skip_1, ..., skip_block_depth]`: the
        downsampled features of shape `(B, H // 2, W // 2, width)` and the
        `block_depth` skip tensors of shape `(B, H, W, width)`, in the order
        they were computed.

    Example:

    ```python
    x = np.random.normal(size=(2, 8, 8, 16)).astype("float32")
    emb = np.random.normal(size=(2, 64)).astype("float32")
    block = keras_immiscible.layers.DownBlock(32, block_depth=2)
    x_down, skip_1, skip_2 = block([x, emb])
    x_down.shape  # (2, 4, 4, 32)
    skip_1.shape  # (2, 8, 8, 32)
    ```
    """

    def __init__(
        self,
        width,
        block_depth,
        attention=False,
        dropout=0.0,
        groups=8,
        num_heads=1,
        downsample="average",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.width = check_positive_int(width, "width")
        self.block_depth = check_positive_int(block_depth, "block_depth")
        self.attention = bool(attention)
        self.dropout = check_probability(dropout, "dropout", allow_one=False)
        self.groups = check_positive_int(groups, "groups", allow_none=True)
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if downsample not in _DOWNSAMPLE_MODES:
            raise ValueError(
                f"`downsample` must be one of {_DOWNSAMPLE_MODES}. "
                f"Received: downsample={downsample!r}"
            )
        self.downsample = downsample

        self.residual_blocks = [
            ResidualBlock(
                self.width,
                groups=self.groups,
                dropout=self.dropout,
                dtype=self.dtype_policy,
                name=f"residual_block_{i}",
            )
            for i in range(self.block_depth)
        ]
        self.attention_blocks = (
            [
                AttentionBlock(
                    num_heads=self.num_heads,
                    groups=self.groups,
                    dtype=self.dtype_policy,
                    name=f"attention_block_{i}",
                )
                for i in range(self.block_depth)
            ]
            if self.attention
            else []
        )
        if downsample == "average":
            self.downsampler = keras.layers.AveragePooling2D(
                2, dtype=self.dtype_policy, name="downsample"
            )
        else:
            self.downsampler = keras.layers.Conv2D(
                self.width,
                3,
                strides=2,
                padding="same",
                dtype=self.dtype_policy,
                name="downsample",
            )

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                "`DownBlock` must be called on a list `[x, emb]`. "
                f"Received input shapes: {input_shape}"
            )
        x_shape, emb_shape = (tuple(s) for s in input_shape)
        if len(x_shape) != 4:
            raise ValueError(
                "`DownBlock` expects `x` of rank 4 (B, H, W, C). "
                f"Received: x.shape={x_shape}"
            )
        for size in x_shape[1:3]:
            if size is not None and size % 2:
                raise ValueError(
                    "`DownBlock` needs even spatial dimensions to downsample. "
                    f"Received: x.shape={x_shape}"
                )
        for i, residual_block in enumerate(self.residual_blocks):
            residual_block.build([x_shape, emb_shape])
            x_shape = x_shape[:-1] + (self.width,)
            if self.attention:
                self.attention_blocks[i].build(x_shape)
        self.downsampler.build(x_shape)
        self.built = True

    def call(self, inputs, training=None):
        x, emb = inputs
        skips = []
        for i, residual_block in enumerate(self.residual_blocks):
            x = residual_block([x, emb], training=training)
            if self.attention:
                x = self.attention_blocks[i](x, training=training)
            skips.append(x)
        return [self.downsampler(x)] + skips

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "width": self.width,
                "block_depth": self.block_depth,
                "attention": self.attention,
                "dropout": self.dropout,
                "groups": self.groups,
                "num_heads": self.num_heads,
                "downsample": self.downsample,
            }
        )
        return config
