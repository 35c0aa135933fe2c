"""Diffusion models trained with immiscible noise assignment."""

from keras_immiscible.models.immiscible_diffusion import ImmiscibleDiffusion
