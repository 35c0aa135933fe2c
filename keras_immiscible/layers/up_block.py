"""UNet decoder stage: 2x upsampling then skip-concatenating residual blocks."""

import keras
from keras import ops

from keras_immiscible.layers.unet_stage import UNetStage
from keras_immiscible.utils.arguments import check_choice

_INTERPOLATIONS = ("nearest", "bilinear")


@keras.saving.register_keras_serializable(package="keras_immiscible")
class UpBlock(UNetStage):
    """Decoder stage of a UNet.

    Doubles the spatial resolution, then applies `block_depth`
    time-conditioned `ResidualBlock`s (each followed by an `AttentionBlock`
    when `attention=True`). Before each residual block the matching skip
    connection of the corresponding `DownBlock` is concatenated on the
    channel axis, the skips being consumed in reverse order (last skip
    first), as a stack.

    Args:
        width: int. Number of channels of the residual blocks (and of the
            output).
        block_depth: int. Number of residual blocks, which is also the number
            of skip tensors expected.
        attention: bool. Whether to follow each residual block with an
            `AttentionBlock`.
        dropout: float in [0, 1). Dropout rate of the residual blocks.
        groups: int or None. Normalization groups, see `ResidualBlock`.
        num_heads: int. Number of attention heads when `attention=True`.
        interpolation: `"bilinear"` or `"nearest"`: interpolation of the 2x
            upsampling.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: list `[x, emb, skip_1, ..., skip_block_depth]` with `x` of
            shape `(B, H, W, C)`, `emb` of shape `(B, E)` and the skips of
            shape `(B, 2H, 2W, C_skip)` in the order a `DownBlock` returned
            them.
        training: bool. Whether dropout and normalization run in training
            mode.

    Returns:
        Tensor of shape `(B, 2H, 2W, width)`.

    Example:

    ```python
    emb = np.random.normal(size=(2, 64)).astype("float32")
    down = keras_immiscible.layers.DownBlock(32, block_depth=2)
    up = keras_immiscible.layers.UpBlock(32, block_depth=2)
    x = np.random.normal(size=(2, 8, 8, 16)).astype("float32")
    x_down, *skips = down([x, emb])
    up([x_down, emb, *skips]).shape  # (2, 8, 8, 32)
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
        interpolation="bilinear",
        **kwargs,
    ):
        super().__init__(
            width, block_depth, attention, dropout, groups, num_heads, **kwargs
        )
        self.interpolation = check_choice(
            interpolation, "interpolation", _INTERPOLATIONS
        )

        self.upsample = keras.layers.UpSampling2D(
            2,
            interpolation=self.interpolation,
            dtype=self.dtype_policy,
            name="upsample",
        )
        self._make_blocks()

    def _split_shapes(self, input_shape):
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) != 2 + self.block_depth
        ):
            raise ValueError(
                "`UpBlock` must be called on a list "
                "`[x, emb, skip_1, ..., skip_block_depth]` of "
                f"{2 + self.block_depth} tensors (block_depth="
                f"{self.block_depth}). Received input shapes: {input_shape}"
            )
        shapes = [tuple(s) for s in input_shape]
        return shapes[0], shapes[1], shapes[2:]

    def build(self, input_shape):
        x_shape, emb_shape, skip_shapes = self._split_shapes(input_shape)
        if len(x_shape) != 4:
            raise ValueError(
                "`UpBlock` expects `x` of rank 4 (B, H, W, C). "
                f"Received: x.shape={x_shape}"
            )
        self.upsample.build(x_shape)
        x_shape = (
            x_shape[0],
            None if x_shape[1] is None else 2 * x_shape[1],
            None if x_shape[2] is None else 2 * x_shape[2],
            x_shape[3],
        )
        for i in range(self.block_depth):
            skip_shape = skip_shapes[-1 - i]
            concat_shape = x_shape[:-1] + (x_shape[-1] + skip_shape[-1],)
            x_shape = self._build_block(i, concat_shape, emb_shape)
        self.built = True

    def call(self, inputs, training=None):
        x, emb = inputs[0], inputs[1]
        skips = list(inputs[2:])
        x = self.upsample(x)
        for i in range(self.block_depth):
            x = ops.concatenate([x, skips.pop()], axis=-1)
            x = self._call_block(i, x, emb, training)
        return x

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}
