"""Diffusion models trained with immiscible noise assignment."""

from keras_immiscible.models import predictions
from keras_immiscible.models.immiscible_consistency import ImmiscibleConsistency
from keras_immiscible.models.immiscible_diffusion import ImmiscibleDiffusion
from keras_immiscible.models.immiscible_flow_matching import ImmiscibleFlowMatching
from keras_immiscible.models.immiscible_model import ImmiscibleModel
