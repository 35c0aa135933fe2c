"""keras-immiscible: Immiscible Diffusion noise assignment for Keras 3."""

from keras_immiscible import assignment
from keras_immiscible import data
from keras_immiscible import layers
from keras_immiscible import models
from keras_immiscible import ops
from keras_immiscible import optimizers
from keras_immiscible import samplers
from keras_immiscible import schedules
from keras_immiscible.models import ImmiscibleConsistency
from keras_immiscible.models import ImmiscibleDiffusion
from keras_immiscible.models import ImmiscibleFlowMatching

__version__ = "0.1.0.dev0"
from keras_immiscible import callbacks  # noqa: E402
from keras_immiscible import latent  # noqa: E402
from keras_immiscible import metrics  # noqa: E402
