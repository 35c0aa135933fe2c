"""An EMA of the weights with a warm-up: `EMAWarmup` and `AdamW`.

Keras' optimizers keep an exponential moving average of the weights with
`use_ema=True`, at a constant momentum `m`. The average starts as a copy of
the random initial weights, which keep a weight of `m ** t` after `t` steps:
with `m = 0.999`, 29% after 1,250 steps. Diffusion models are sampled with
the average, so short runs sample from a blend of trained and random
weights. The warm-up of Tarvainen & Valpola (2017) and of most diffusion
code uses, at step `t` (counted from 0),

    momentum(t) = min(m, (1 + t) / (warmup + t))

which starts at 1 / warmup and tends to `m`: early averages forget the
initialisation quickly, late ones average over about 1 / (1 - m) steps.
"""

import keras
from keras import ops

from keras_immiscible.utils import arguments


def warmup_momentum(ema_momentum, iterations, warmup):
    """The EMA momentum at step `iterations` (0 at the first step).

    Args:
        ema_momentum: the final momentum `m`, a float in [0, 1).
        iterations: the optimizer's step counter (a scalar tensor or int).
        warmup: the warm-up constant (a float >= 1), or `None` for the
            constant momentum of Keras.

    Returns:
        A float32 scalar: `min(m, (1 + t) / (warmup + t))`, or `m`.

    Example:

    >>> float(warmup_momentum(0.999, 0, 10.0))
    0.1
    """
    momentum = ops.convert_to_tensor(ema_momentum, "float32")
    if warmup is None:
        return momentum
    t = ops.cast(iterations, "float32")
    return ops.minimum(momentum, (1.0 + t) / (float(warmup) + t))


def _check_warmup(ema_warmup):
    return arguments.check_number(ema_warmup, "ema_warmup", low=1, allow_none=True)


class EMAWarmup:
    """Mixin: the optimizer's EMA uses `min(m, (1 + t) / (ema_warmup + t))`.

    Put it before a Keras optimizer class to give that optimizer's EMA a
    warm-up; everything else (the update rule, `use_ema`, `ema_momentum`,
    `ema_overwrite_frequency`, `finalize_variable_values`, saving) is the
    optimizer's own. The average is still a plain copy of the weights at
    the first step, as in Keras.

    Args:
        ema_warmup: the warm-up constant, a number >= 1 (default 10: the
            momentum is 0.1 at the first step, 0.5 at step 8, 0.9 at step
            80), or `None` for Keras' constant momentum.
        **kwargs: the optimizer's own arguments.

    Example:

    ```python
    class Lion(ki.optimizers.EMAWarmup, keras.optimizers.Lion):
        pass

    optimizer = Lion(1e-4, use_ema=True, ema_momentum=0.999, ema_warmup=10)
    ```
    """

    def __init__(self, *args, ema_warmup=10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema_warmup = _check_warmup(ema_warmup)

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        momentum = warmup_momentum(self.ema_momentum, self.iterations, self.ema_warmup)
        # Keras' rule: at the first step the average becomes a copy.
        momentum = momentum * ops.cast(ops.not_equal(self.iterations, 0), "float32")
        for variable, average in zip(
            trainable_variables, self._model_variables_moving_average
        ):
            if average is None:
                continue
            m = ops.cast(momentum, variable.dtype)
            average.assign(m * average + (1.0 - m) * variable)

    def get_config(self):
        config = super().get_config()
        config["ema_warmup"] = self.ema_warmup
        return config


@keras.saving.register_keras_serializable(package="keras_immiscible")
class AdamW(EMAWarmup, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose EMA has a warm-up (see `EMAWarmup`).

    Args:
        learning_rate: as `keras.optimizers.AdamW` (default 1e-3).
        ema_warmup: the warm-up constant (default 10), or `None` for Keras'
            constant momentum. Only used with `use_ema=True`.
        **kwargs: the other `keras.optimizers.AdamW` arguments
            (`weight_decay`, `use_ema`, `ema_momentum`, ...).

    Example:

    ```python
    optimizer = ki.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=0.999)
    model.compile(optimizer=optimizer)
    ```
    """
