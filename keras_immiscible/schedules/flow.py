"""The straight interpolation path of rectified flow / flow matching."""

import keras

from keras_immiscible.schedules.schedule import Schedule


@keras.saving.register_keras_serializable(package="keras_immiscible")
class LinearInterpolation(Schedule):
    """Straight path between data and noise (rectified flow, flow matching).

    ```
    x_t = (1 - t) * x_0 + t * noise
    signal_rate(t) = 1 - t,  noise_rate(t) = t
    ```

    The path is not variance preserving (`signal**2 + noise**2 < 1` inside
    `(0, 1)`). Its velocity is `d x_t / d t = noise - x_0`, the regression
    target of flow matching; sample with `keras_immiscible.samplers.Euler`
    or `Heun` (or with `DDIM`, whose `eta = 0` update on this path is the
    Euler step). The network is conditioned on `t` itself, and training
    times are uniform in `[0, 1]`.

    Example:

    ```python
    schedule = keras_immiscible.schedules.LinearInterpolation()
    t = schedule.sample_times(4, seed=0)
    signal_rate, noise_rate = schedule(t)  # 1 - t, t
    ```
    """

    def __call__(self, t):
        t = self._convert_time(t)
        return 1.0 - t, t
