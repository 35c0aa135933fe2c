"""Denoising Diffusion Implicit Models (DDIM) sampler."""

import keras
from keras import ops

from keras_immiscible.samplers.sampler import SamplerBase
from keras_immiscible.samplers.sampler import batch_times
from keras_immiscible.samplers.sampler import posterior_variance
from keras_immiscible.samplers.sampler import seed_generator
from keras_immiscible.samplers.sampler import start_run
from keras_immiscible.samplers.sampler import transition_rates
from keras_immiscible.utils import arguments


@keras.saving.register_keras_serializable(package="keras_immiscible")
class DDIM(SamplerBase):
    """DDIM sampler (Song et al., 2021), for any schedule.

    Walks from `t = 1` to `t = 0` in `steps` steps (on a discrete schedule,
    over the schedule's grid, see below). At each step from `t` to the next
    time `s < t`, the predictions `(pred_noise, pred_data)` at `t` give

    ```
    x_s = a_s * pred_data + sqrt(b_s**2 - sigma**2) * pred_noise + sigma * z
    sigma**2 = eta**2 * b_s**2 * (1 - snr(t) / snr(s)),  snr = a**2 / b**2
    ```

    with `(a, b) = schedule(time)` and `z ~ N(0, I)`. `eta = 0` is the
    deterministic DDIM sampler; `eta = 1` makes `sigma**2` the variance of
    the posterior `q(x_s | x_t, x_0)` of the Gaussian path, i.e. ancestral
    DDPM sampling's (for variance-preserving schedules this is the usual
    `(b_s**2 / b_t**2) * (1 - a_t**2 / a_s**2)`; the general form also holds
    for paths such as `LinearInterpolation`). For `eta > 1`, `sigma**2` is
    clipped to `b_s**2`. As in the keras.io DDIM example, the returned
    samples are the data prediction `pred_data` made at the last visited
    time (`t = 1 / steps`).

    Coupled noise: `eta > 0` (`stochastic`) injects `z` independent of the
    data, which assumes the model's training noise was independent of the
    data too. For a model trained on noise assigned to its data (linear
    assignment, KNN selection) that is false and the sampler samples the
    wrong distribution (too narrow on Gaussian data); `eta = 0`, the
    probability-flow ODE of the coupled path, stays valid.

    The visited times are `t_k = (steps - k) / steps`; on a discrete
    schedule (e.g. `LinearBeta`) with `T` steps they are rounded to the grid
    `i / T`, so `steps == T` visits every step, and `steps` may not exceed
    `T`. On `LinearInterpolation` the `eta = 0` update is exactly an Euler
    step of the flow `d x / d t = pred_noise - pred_data`.

    Args:
        eta: float >= 0. Scale of the noise injected at each step; use
            `eta = 0` on models trained with assigned noise.

    Example:

    ```python
    schedule = keras_immiscible.schedules.CosineSchedule()
    sampler = keras_immiscible.samplers.DDIM(eta=0.0)

    def denoise(x_t, t):
        # Stands in for a trained model: the optimal denoiser for data
        # drawn from N(0, I). Returns (pred_noise, pred_data).
        signal_rate, noise_rate = schedule(t)
        pred_noise = x_t * noise_rate[:, None, None, None]
        pred_data = x_t * signal_rate[:, None, None, None]
        return pred_noise, pred_data

    initial_noise = keras.random.normal((4, 8, 8, 1), seed=0)
    images = sampler.sample(denoise, initial_noise, schedule, steps=20)
    ```
    """

    kind = "denoise"

    def __init__(self, eta=0.0):
        eta = arguments.check_number(eta, "eta", low=0)
        self.eta = eta

    @property
    def stochastic(self):
        """`eta > 0`: whether noise is injected between steps (read-only)."""
        return self.eta > 0.0

    def sample(self, denoise, initial_noise, schedule, steps, seed=None):
        """Generates samples from pure noise.

        Args:
            denoise: callable `denoise(x_t, t) -> (pred_noise, pred_data)`,
                with `x_t` of shape `(B, ...)` and `t` a float tensor of shape
                `(B,)`; both predictions have the shape of `x_t`.
            initial_noise: float tensor of shape `(B, ...)`, the starting
                point at `t = 1`, normally drawn from `N(0, I)`.
            schedule: a `keras_immiscible.schedules.Schedule`.
            steps: int >= 1. Number of denoising steps (at most
                `schedule.num_steps` on a discrete schedule).
            seed: None, int or `keras.random.SeedGenerator`. Seeds the noise
                injected when `eta > 0` (unused when `eta == 0`).

        Returns:
            Tensor shaped like `initial_noise`: the data predicted at the
            last step.
        """
        steps, x, batch_size, times = start_run(
            denoise, "denoise", initial_noise, schedule, steps
        )
        dtype = x.dtype
        rates = transition_rates(schedule, times, dtype)
        if rates is not None:
            signal, noise, next_signal, next_noise = rates
            if self.eta > 0.0:
                generator = seed_generator(seed)
                next_noise_var = ops.square(next_noise)
                sigma_sq = ops.minimum(
                    self.eta**2
                    * posterior_variance(signal, noise, next_signal, next_noise),
                    next_noise_var,
                )
                noise_gains = ops.sqrt(next_noise_var - sigma_sq)
                sigmas = ops.sqrt(sigma_sq)
            else:
                noise_gains = next_noise
            data_gains = next_signal

        pred_data = None
        for step in range(steps):
            t = batch_times(times[step], batch_size, dtype)
            pred_noise, pred_data = denoise(x, t)
            if step == steps - 1:
                # The update to t = 0 would be discarded: return pred_data.
                break
            x = data_gains[step] * pred_data + noise_gains[step] * pred_noise
            if self.eta > 0.0:
                z = keras.random.normal(ops.shape(x), dtype=dtype, seed=generator)
                x = x + sigmas[step] * z
        return pred_data

    def get_config(self):
        """Returns the constructor arguments of the sampler as a dict."""
        return {"eta": self.eta}
