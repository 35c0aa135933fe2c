"""The vanilla baseline: plain Gaussian noise, no assignment."""

import keras

from keras_immiscible.assignment.noise_assigner import NoiseAssigner


@keras.saving.register_keras_serializable(package="keras_immiscible")
class RandomNoise(NoiseAssigner):
    """Plain diffusion: each sample gets an independent Gaussian draw.

    Example:

    >>> noise = RandomNoise()(images, seed=0)  # same shape as images
    """
