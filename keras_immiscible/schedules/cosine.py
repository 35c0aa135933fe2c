"""Continuous cosine noise schedule of the keras.io DDIM example."""

import math

import keras
from keras import ops

from keras_immiscible.schedules.schedule import Schedule
from keras_immiscible.utils import arguments


@keras.saving.register_keras_serializable(package="keras_immiscible")
class CosineSchedule(Schedule):
    """Continuous cosine schedule of the keras.io DDIM example.

    With `start = acos(max_signal_rate)` and `end = acos(min_signal_rate)`,

    ```
    angle(t) = start + t * (end - start)
    signal_rate(t) = cos(angle(t))
    noise_rate(t) = sin(angle(t))
    ```

    so that `signal_rate ** 2 + noise_rate ** 2 == 1` (variance preserving),
    the signal rate decreasing from `max_signal_rate` at `t = 0` to
    `min_signal_rate` at `t = 1`. The network is conditioned on the noise
    variance `noise_rate(t) ** 2`.

    Args:
        min_signal_rate: float. Signal rate at `t = 1` (the noisiest time).
        max_signal_rate: float. Signal rate at `t = 0` (the cleanest time).
            Must satisfy `0 < min_signal_rate < max_signal_rate <= 1`.

    Example:

    ```python
    schedule = keras_immiscible.schedules.CosineSchedule()
    t = schedule.sample_times(4, seed=0)
    signal_rate, noise_rate = schedule(t)
    noise_level = schedule.conditioning(t)  # == noise_rate ** 2
    ```
    """

    def __init__(self, min_signal_rate=0.02, max_signal_rate=0.95):
        min_signal_rate = arguments.check_number(min_signal_rate, "min_signal_rate")
        max_signal_rate = arguments.check_number(max_signal_rate, "max_signal_rate")
        if not 0.0 < min_signal_rate < max_signal_rate <= 1.0:
            raise ValueError(
                "Expected 0 < `min_signal_rate` < `max_signal_rate` <= 1. "
                f"Received: min_signal_rate={min_signal_rate}, "
                f"max_signal_rate={max_signal_rate}"
            )
        self.min_signal_rate = min_signal_rate
        self.max_signal_rate = max_signal_rate
        self._start_angle = math.acos(max_signal_rate)
        self._end_angle = math.acos(min_signal_rate)

    def __call__(self, t):
        t = self._convert_time(t)
        angles = self._start_angle + t * (self._end_angle - self._start_angle)
        return ops.cos(angles), ops.sin(angles)

    def conditioning(self, t):
        _, noise_rate = self(t)
        return ops.square(noise_rate)

    def get_config(self):
        return {
            "min_signal_rate": self.min_signal_rate,
            "max_signal_rate": self.max_signal_rate,
        }
