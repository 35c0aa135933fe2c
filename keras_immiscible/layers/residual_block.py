"""Time-conditioned residual block."""

import keras
from keras import ops

from keras_immiscible.layers.normalization import make_norm
from keras_immiscible.utils.arguments import check_positive_int
from keras_immiscible.utils.arguments import check_probability


@keras.saving.register_keras_serializable(package="keras_immiscible")
class ResidualBlock(keras.layers.Layer):
    """Residual block conditioned on a time (noise level) embedding.

    Computes

    ```
    h = conv3x3(swish(norm1(x)))
    scale, shift = split(dense(emb), 2)
    h = norm2(h) * (1 + scale) + shift        # FiLM, per channel
    h = conv3x3(dropout(swish(h)))
    out = h + skip(x)
    ```

    where `skip` is a 1x1 convolution when the number of input channels
    differs from `width`, and the identity otherwise. The conditioning
    embedding thus modulates every block of a network built from it, not only
    its input.

    Args:
        width: int. Number of output channels.
        groups: int or None. Number of groups of the `GroupNormalization`
            layers. When the number of channels normalized is not divisible by
            `groups`, the largest divisor of the channel count below `groups`
            is used instead. `None` uses
            `BatchNormalization(center=False, scale=False)`, as in the
            keras.io DDIM example.
        dropout: float in [0, 1). Dropout rate applied before the second
            convolution.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: list `[x, emb]` with `x` of shape `(B, H, W, C)` and `emb` of
            shape `(B, E)`.
        training: bool. Whether dropout (and batch normalization) run in
            training mode.

    Returns:
        Tensor of shape `(B, H, W, width)`.

    Example:

    ```python
    x = np.random.normal(size=(2, 8, 8, 16)).astype("float32")
    emb = np.random.normal(size=(2, 64)).astype("float32")
    block = keras_immiscible.layers.ResidualBlock(32)
    block([x, emb]).shape  # (2, 8, 8, 32)
    ```
    """

    def __init__(self, width, groups=8, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.width = check_positive_int(width, "width")
        self.groups = check_positive_int(groups, "groups", allow_none=True)
        self.dropout = check_probability(dropout, "dropout", allow_one=False)

        self.conv1 = keras.layers.Conv2D(
            self.width, 3, padding="same", dtype=self.dtype_policy, name="conv1"
        )
        self.norm2 = make_norm(
            self.width, self.groups, "norm2", dtype=self.dtype_policy
        )
        self.film = keras.layers.Dense(
            2 * self.width, dtype=self.dtype_policy, name="film"
        )
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="dropout"
        )
        self.conv2 = keras.layers.Conv2D(
            self.width, 3, padding="same", dtype=self.dtype_policy, name="conv2"
        )
        # Created in `build()`, once the number of input channels is known.
        self.norm1 = None
        self.skip = None

    def _split_shapes(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                f"`{self.__class__.__name__}` must be called on a list "
                "`[x, emb]`. "
                f"Received input shapes: {input_shape}"
            )
        x_shape, emb_shape = (tuple(s) for s in input_shape)
        if len(x_shape) != 4 or len(emb_shape) != 2:
            raise ValueError(
                f"`{self.__class__.__name__}` expects `x` of rank 4 "
                "(B, H, W, C) and `emb` of rank 2 (B, E). "
                f"Received: x.shape={x_shape}, emb.shape={emb_shape}"
            )
        return x_shape, emb_shape

    def build(self, input_shape):
        x_shape, emb_shape = self._split_shapes(input_shape)
        channels = x_shape[-1]
        hidden_shape = x_shape[:-1] + (self.width,)

        self.norm1 = make_norm(channels, self.groups, "norm1", dtype=self.dtype_policy)
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        self.norm2.build(hidden_shape)
        self.film.build(emb_shape)
        self.conv2.build(hidden_shape)
        if channels != self.width:
            self.skip = keras.layers.Conv2D(
                self.width, 1, dtype=self.dtype_policy, name="skip"
            )
            self.skip.build(x_shape)
        self.built = True

    def call(self, inputs, training=None):
        x, emb = inputs
        h = keras.activations.silu(self.norm1(x, training=training))
        h = self.conv1(h)
        h = self.norm2(h, training=training)
        scale, shift = ops.split(self.film(emb), 2, axis=-1)
        scale = scale[:, None, None, :]
        shift = shift[:, None, None, :]
        h = h * (1.0 + scale) + shift
        h = keras.activations.silu(h)
        h = self.dropout_layer(h, training=training)
        h = self.conv2(h)
        residual = x if self.skip is None else self.skip(x)
        return h + residual

    def compute_output_shape(self, input_shape):
        x_shape, _ = self._split_shapes(input_shape)
        return x_shape[:-1] + (self.width,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "width": self.width,
                "groups": self.groups,
                "dropout": self.dropout,
            }
        )
        return config
