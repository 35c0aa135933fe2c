"""Latent diffusion: autoencoders and encoded datasets.

- `Autoencoder`: the encoder/decoder interface that latent models use
  (`encode`, `decode`, `image_shape`, `latent_shape`, `scaling_factor`), for
  any pair of Keras models or callables.
- `StableDiffusionVAE`: Stable Diffusion 1.x's VAE from keras-cv (the
  optional extra `keras-immiscible[latent]`; keras-cv is imported only when
  one is built).
- `encode_dataset`: encodes an image dataset once into latent arrays,
  cached as `.npz`.
"""

from keras_immiscible.latent.autoencoder import Autoencoder
from keras_immiscible.latent.encode_dataset import encode_dataset
from keras_immiscible.latent.stable_diffusion import StableDiffusionVAE
