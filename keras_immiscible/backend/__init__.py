"""The one place where keras-immiscible talks to a specific backend.

Everything else in the library is written with `keras.ops`. Two things cannot
be: calling a host (numpy/scipy) function from inside a compiled step, and
telling whether a tensor holds concrete values (so that it can be validated
eagerly) or is a placeholder being traced. And, for multi-device training
(`distribution`), which rows of the global batch a device holds.
"""

from keras_immiscible.backend import distribution
from keras_immiscible.backend.host import compiled
from keras_immiscible.backend.host import host_call
from keras_immiscible.backend.host import in_xla_context
from keras_immiscible.backend.host import inference_function
from keras_immiscible.backend.host import is_concrete
from keras_immiscible.backend.host import untie_ema_buffers
