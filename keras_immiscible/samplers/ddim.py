"""Denoising Diffusion Implicit Models (DDIM) sampler."""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_immiscible")
class DDIM:
    """DDIM sampler (Song et al., 2021) for continuous-time schedules.

    Integrates from `t = 1` to `t = 0` in `steps` equal steps. At each step
    from `t` to `t' = t - 1 / steps`, the model's predictions
    `(pred_noise, pred_data)` at `t` give

    ```
    x_t' = signal(t') * pred_data
           + sqrt(noise(t')**2 - sigma**2) * pred_noise
           + sigma * z
    sigma = eta * sqrt(noise(t')**2 / noise(t)**2
                       * (1 - signal(t)**2 / signal(t')**2))
    ```

    with `z ~ N(0, I)`. `eta = 0` is the deterministic DDIM sampler,
    `eta = 1` matches the variance of ancestral DDPM sampling (for
    `eta > 1`, `sigma**2` is clipped to `noise(t')**2`). As in the
    keras.io DDIM example, the returned samples are the data prediction
    `pred_data` made at the last step (at `t = 1 / steps`).

    Args:
        eta: float >= 0. Scale of the noise injected at each step.

    Example:

    ```python
    schedule = keras_immiscible.schedules.CosineSchedule()
    sampler = keras_immiscible.samplers.DDIM(eta=0.0)

    def denoise(x_t, t):
        # Stands in for a trained model: the optimal denoiser for data
        # drawn from N(0, I). Returns (pred_noise, pred_data).
        signal_rate, noise_rate = schedule(t)
        pred_noise = x_t * noise_rate[:, None, None, None]
        pred_data = (x_t - noise_rate[:, None, None, None] * pred_noise) / (
            signal_rate[:, None, None, None]
        )
        return pred_noise, pred_data

    initial_noise = keras.random.normal((4, 8, 8, 1), seed=0)
    images = sampler.sample(denoise, initial_noise, schedule, steps=20)
    ```
    """

    def __init__(self, eta=0.0):
        if isinstance(eta, bool):
            raise TypeError(f"`eta` must be a number. Received: eta={eta!r}")
        try:
            eta = float(eta)
        except (TypeError, ValueError):
            raise TypeError(
                f"`eta` must be a number. Received: eta={eta!r}"
            ) from None
        if not eta >= 0.0:
            raise ValueError(f"`eta` must be >= 0. Received: eta={eta}")
        self.eta = eta

    def sample(self, denoise, initial_noise, schedule, steps, seed=None):
        """Generates samples from pure noise.

        Args:
            denoise: callable `denoise(x_t, t) -> (pred_noise, pred_data)`,
                with `x_t` of shape `(B, ...)` and `t` a float tensor of shape
                `(B,)`; both predictions have the shape of `x_t`.
            initial_noise: float tensor of shape `(B, ...)`, the starting
                point at `t = 1`, normally drawn from `N(0, I)`.
            schedule: a `keras_immiscible.schedules.Schedule`.
            steps: int >= 1. Number of denoising steps.
            seed: None, int or `keras.random.SeedGenerator`. Seeds the noise
                injected when `eta > 0` (unused when `eta == 0`).

        Returns:
            Tensor shaped like `initial_noise`: the data predicted at the
            last step.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise ValueError(
                f"`steps` must be an integer >= 1. Received: steps={steps!r}"
            )
        if steps < 1:
            raise ValueError(
                f"`steps` must be an integer >= 1. Received: steps={steps}"
            )
        if not callable(denoise):
            raise TypeError(
                f"`denoise` must be callable. Received: denoise={denoise!r}"
            )
        steps = int(steps)
        x = ops.convert_to_tensor(initial_noise)
        dtype = x.dtype
        rank = len(ops.shape(x))
        if rank < 1:
            raise ValueError(
                "`initial_noise` must have a batch dimension. "
                f"Received shape: {ops.shape(x)}"
            )
        batch_size = ops.shape(x)[0]
        broadcast_shape = (-1,) + (1,) * (rank - 1)

        def rates(t):
            signal_rate, noise_rate = schedule(t)
            return (
                ops.reshape(ops.cast(signal_rate, dtype), broadcast_shape),
                ops.reshape(ops.cast(noise_rate, dtype), broadcast_shape),
            )

        if self.eta > 0.0:
            if isinstance(seed, keras.random.SeedGenerator):
                seed_generator = seed
            else:
                seed_generator = keras.random.SeedGenerator(seed)

        step_size = 1.0 / steps
        pred_data = None
        for step in range(steps):
            t_value = 1.0 - step * step_size
            t = ops.full((batch_size,), t_value, dtype=dtype)
            pred_noise, pred_data = denoise(x, t)
            if step == steps - 1:
                # The update to t = 0 would be discarded: return pred_data.
                break
            next_t = ops.full((batch_size,), t_value - step_size, dtype=dtype)
            signal_rate, noise_rate = rates(t)
            next_signal_rate, next_noise_rate = rates(next_t)
            next_noise_var = ops.square(next_noise_rate)
            if self.eta > 0.0:
                sigma_sq = (
                    self.eta**2
                    * next_noise_var
                    / ops.square(noise_rate)
                    * (1.0 - ops.square(signal_rate / next_signal_rate))
                )
                sigma_sq = ops.clip(sigma_sq, 0.0, next_noise_var)
                z = keras.random.normal(
                    ops.shape(x), dtype=dtype, seed=seed_generator
                )
                x = (
                    next_signal_rate * pred_data
                    + ops.sqrt(next_noise_var - sigma_sq) * pred_noise
                    + ops.sqrt(sigma_sq) * z
                )
            else:
                x = next_signal_rate * pred_data + next_noise_rate * pred_noise
        return pred_data

    def get_config(self):
        """Returns the constructor arguments of the sampler as a dict."""
        return {"eta": self.eta}

    @classmethod
    def from_config(cls, config):
        """Creates a sampler from the output of `get_config()`."""
        return cls(**config)

    def __repr__(self):
        return f"{self.__class__.__name__}(eta={self.eta!r})"
