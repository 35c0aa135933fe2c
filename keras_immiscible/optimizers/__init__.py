"""Optimizers for training generative models.

- `EMAWarmup`: a mixin that gives any Keras optimizer's EMA (`use_ema=True`)
  a warm-up, so that short runs are not dominated by the random initial
  weights.
- `AdamW`: `keras.optimizers.AdamW` with `EMAWarmup`.
"""

from keras_immiscible.optimizers.ema_warmup import AdamW
from keras_immiscible.optimizers.ema_warmup import EMAWarmup
from keras_immiscible.optimizers.ema_warmup import warmup_momentum
