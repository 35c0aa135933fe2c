"""Spatial self-attention block."""

import keras
from keras import ops

from keras_immiscible.layers.normalization import make_norm
from keras_immiscible.utils.arguments import check_positive_int


@keras.saving.register_keras_serializable(package="keras_immiscible")
class AttentionBlock(keras.layers.Layer):
    """Self-attention over the spatial positions of a feature map.

    Computes `x + attention(norm(x))`, where the attention is a
    `keras.layers.MultiHeadAttention` over the `H * W` positions of the
    normalized feature map (each position attends to every other one). The
    output projection of the attention maps back to `C` channels, so the
    output has the shape of the input.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int or None. Size of each head for query and key. `None`
            uses `max(C // num_heads, 1)`, where `C` is the number of input
            channels.
        groups: int or None. Number of groups of the `GroupNormalization`
            applied before the attention (reduced to a divisor of `C` when
            needed). `None` uses `BatchNormalization(center=False,
            scale=False)`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: tensor of shape `(B, H, W, C)`.
        training: bool. Whether the normalization runs in training mode.

    Returns:
        Tensor of shape `(B, H, W, C)`.

    Example:

    ```python
    x = np.random.normal(size=(2, 4, 4, 32)).astype("float32")
    block = keras_immiscible.layers.AttentionBlock(num_heads=4)
    block(x).shape  # (2, 4, 4, 32)
    ```
    """

    def __init__(self, num_heads=1, key_dim=None, groups=8, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int(num_heads, "num_heads")
        self.key_dim = check_positive_int(key_dim, "key_dim", allow_none=True)
        self.groups = check_positive_int(groups, "groups", allow_none=True)
        # Created in `build()`, once the number of channels is known.
        self.norm = None
        self.attention = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4:
            raise ValueError(
                "`AttentionBlock` expects an input of rank 4 (B, H, W, C). "
                f"Received: input_shape={input_shape}"
            )
        _, height, width, channels = input_shape
        key_dim = self.key_dim or max(channels // self.num_heads, 1)
        self.norm = make_norm(channels, self.groups, "norm", dtype=self.dtype_policy)
        self.norm.build(input_shape)
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=key_dim,
            dtype=self.dtype_policy,
            name="attention",
        )
        length = None if height is None or width is None else height * width
        sequence_shape = (input_shape[0], length, channels)
        self.attention.build(sequence_shape, sequence_shape)
        self.built = True

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        h = self.norm(inputs, training=training)
        h = ops.reshape(h, (-1, shape[1] * shape[2], shape[3]))
        h = self.attention(h, h, training=training)
        h = ops.reshape(h, (-1, shape[1], shape[2], shape[3]))
        return inputs + h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "groups": self.groups,
            }
        )
        return config
