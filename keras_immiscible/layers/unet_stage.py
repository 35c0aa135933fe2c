"""What `DownBlock` and `UpBlock` share: a UNet stage's residual blocks."""

import keras

from keras_immiscible.layers.attention_block import AttentionBlock
from keras_immiscible.layers.residual_block import ResidualBlock
from keras_immiscible.utils.arguments import check_positive_int
from keras_immiscible.utils.arguments import check_probability


class UNetStage(keras.layers.Layer):
    """Base of `DownBlock` and `UpBlock` (not exported).

    Checks and holds the arguments the two stages share, creates their
    `block_depth` `ResidualBlock`s (each followed by an `AttentionBlock` when
    `attention=True`) in `_make_blocks`, builds and applies block `i`, and
    puts the shared arguments in the config. A subclass calls `_make_blocks`
    where the blocks come among its own sublayers (the creation order is the
    order of `weights`).
    """

    def __init__(
        self, width, block_depth, attention, dropout, groups, num_heads, **kwargs
    ):
        super().__init__(**kwargs)
        self.width = check_positive_int(width, "width")
        self.block_depth = check_positive_int(block_depth, "block_depth")
        self.attention = bool(attention)
        self.dropout = check_probability(dropout, "dropout", allow_one=False)
        self.groups = check_positive_int(groups, "groups", allow_none=True)
        self.num_heads = check_positive_int(num_heads, "num_heads")

    def _make_blocks(self):
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

    def _build_block(self, i, x_shape, emb_shape):
        """Builds block `i` on input `x_shape`; returns its output shape."""
        self.residual_blocks[i].build([x_shape, emb_shape])
        x_shape = x_shape[:-1] + (self.width,)
        if self.attention:
            self.attention_blocks[i].build(x_shape)
        return x_shape

    def _call_block(self, i, x, emb, training=None):
        x = self.residual_blocks[i]([x, emb], training=training)
        if self.attention:
            x = self.attention_blocks[i](x, training=training)
        return x

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
            }
        )
        return config
