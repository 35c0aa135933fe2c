"""keras-immiscible: Immiscible Diffusion noise assignment for Keras 3."""

from keras_immiscible import assignment
from keras_immiscible import data
from keras_immiscible import layers
from keras_immiscible import ops
from keras_immiscible import samplers
from keras_immiscible import schedules

__version__ = "0.1.0.dev0"
