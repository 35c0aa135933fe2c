"""UNet encoder stage: residual blocks then 2x downsampling."""

import keras

from keras_immiscible.layers.unet_stage import UNetStage
from keras_immiscible.utils.arguments import check_choice

_DOWNSAMPLE_MODES = ("average", "conv")


@keras.saving.register_keras_serializable(package="keras_immiscible")
class DownBlock(UNetStage):
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
        super().__init__(
            width, block_depth, attention, dropout, groups, num_heads, **kwargs
        )
        self.downsample = check_choice(downsample, "downsample", _DOWNSAMPLE_MODES)
        self._make_blocks()
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
        for i in range(self.block_depth):
            x_shape = self._build_block(i, x_shape, emb_shape)
        self.downsampler.build(x_shape)
        self.built = True

    def call(self, inputs, training=None):
        x, emb = inputs
        skips = []
        for i in range(self.block_depth):
            x = self._call_block(i, x, emb, training)
            skips.append(x)
        return [self.downsampler(x)] + skips

    def get_config(self):
        return {**super().get_config(), "downsample": self.downsample}
