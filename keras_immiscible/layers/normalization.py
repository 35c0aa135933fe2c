"""The normalization layer every block of the UNet uses."""

import keras


def num_groups(channels, groups):
    """The largest divisor of `channels` that is not more than `groups`."""
    for candidate in range(min(groups, channels), 0, -1):
        if channels % candidate == 0:
            return candidate
    return 1


def make_norm(channels, groups, name, dtype=None):
    """A normalization layer for `channels` channels.

    Args:
        channels: int, the channels of the input.
        groups: int, the most groups of a `GroupNormalization` (the largest
            divisor of `channels` not above it is used), or None for the
            keras.io DDIM example's `BatchNormalization` without scale and
            offset.
        name: the layer's name.
        dtype: the layer's dtype policy.

    Returns:
        A `keras.layers.GroupNormalization` or `BatchNormalization`.
    """
    if groups is None:
        return keras.layers.BatchNormalization(
            center=False, scale=False, dtype=dtype, name=name
        )
    return keras.layers.GroupNormalization(
        groups=num_groups(int(channels), groups), dtype=dtype, name=name
    )
