"""Base class of continuous-time noise schedules."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_immiscible")
class Schedule:
    """Base class of continuous-time diffusion noise schedules.

    A schedule maps a time `t` in `[0, 1]` (`t = 0` is the cleanest,
    `t = 1` the noisiest) to the rates of the forward process
    `x_t = signal_rate(t) * x_0 + noise_rate(t) * noise`.

    Subclasses implement `__call__()` and, when they take constructor
    arguments, `get_config()`. They may override `conditioning()` to change
    the value fed to the network as its noise level (the time `t` itself by
    default).

    Example:

    ```python
    class LinearInterpolation(keras_immiscible.schedules.Schedule):
        def __call__(self, t):
            t = self._convert_time(t)
            return 1.0 - t, t

    schedule = LinearInterpolation()
    signal_rate, noise_rate = schedule(schedule.sample_times(8, seed=0))
    ```
    """

    def __call__(self, t):
        """Signal and noise rates at times `t`.

        Args:
            t: float tensor (any shape) of times in `[0, 1]`.

        Returns:
            Tuple `(signal_rate, noise_rate)` of tensors shaped like `t`.
        """
        raise NotImplementedError(
            f"{self.__class__.__name__} must implement `__call__(t)`."
        )

    def conditioning(self, t):
        """Noise level fed to the denoising network at times `t`.

        Args:
            t: float tensor (any shape) of times in `[0, 1]`.

        Returns:
            Tensor shaped like `t`. The base class returns `t` itself.
        """
        return self._convert_time(t)

    def sample_times(self, batch_size, seed=None):
        """Draws training times uniformly in `[0, 1]`.

        Args:
            batch_size: int. Number of times to draw.
            seed: None, int, `keras.random.SeedGenerator` or backend seed
                tensor, passed as is to `keras.random.uniform`.

        Returns:
            float32 tensor of shape `(batch_size,)`.
        """
        return keras.random.uniform(
            (batch_size,), minval=0.0, maxval=1.0, dtype="float32", seed=seed
        )

    def get_config(self):
        """Returns the constructor arguments of the schedule as a dict."""
        return {}

    @classmethod
    def from_config(cls, config):
        """Creates a schedule from the output of `get_config()`."""
        return cls(**config)

    @staticmethod
    def _convert_time(t):
        """Converts `t` to a tensor, casting non-float inputs to floatx."""
        t = ops.convert_to_tensor(t)
        if "float" not in str(keras.backend.standardize_dtype(t.dtype)):
            t = ops.cast(t, keras.backend.floatx())
        return t

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({arguments})"
