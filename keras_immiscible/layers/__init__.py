"""Building blocks of time-conditioned UNet denoisers."""

from keras_immiscible.layers.attention_block import AttentionBlock
from keras_immiscible.layers.down_block import DownBlock
from keras_immiscible.layers.residual_block import ResidualBlock
from keras_immiscible.layers.sinusoidal_embedding import SinusoidalEmbedding
from keras_immiscible.layers.unet import UNet
from keras_immiscible.layers.up_block import UpBlock

__all__ = [
    "AttentionBlock",
    "DownBlock",
    "ResidualBlock",
    "SinusoidalEmbedding",
    "UNet",
    "UpBlock",
]
