"""Ancestral sampler of Denoising Diffusion Probabilistic Models (DDPM)."""

import keras
from keras import ops

from keras_immiscible.samplers.sampler import SamplerBase
from keras_immiscible.samplers.sampler import batch_times
from keras_immiscible.samplers.sampler import posterior_variance
from keras_immiscible.samplers.sampler import seed_generator
from keras_immiscible.samplers.sampler import start_run
from keras_immiscible.samplers.sampler import transition_rates
from keras_immiscible.utils import arguments

VARIANCES = ("posterior", "beta")


@keras.saving.register_keras_serializable(package="keras_immiscible")
class DDPM(SamplerBase):
    """Ancestral DDPM sampler (Ho et al., 2020), strided for fewer steps.

    Each step from a time `t` to the next visited time `s < t` samples the
    Gaussian posterior `q(x_s | x_t, x_0)` of the forward process with the
    predicted data `x_0 = pred_data` put in:

    ```
    alpha = alpha_bar(t) / alpha_bar(s)        # = 1 - beta of the step
    mean = sqrt(alpha_bar(s)) * beta / (1 - alpha_bar(t)) * pred_data
           + sqrt(alpha) * (1 - alpha_bar(s)) / (1 - alpha_bar(t)) * x_t
    x_s = mean + sigma * z,  z ~ N(0, I)
    ```

    with `sigma**2 = beta_tilde = (1 - alpha_bar(s)) / (1 - alpha_bar(t)) *
    beta` (`variance="posterior"`, the true posterior variance) or
    `sigma**2 = beta` (`variance="beta"`, the other choice of Ho et al.).
    Here `alpha_bar = signal_rate**2`. On a discrete schedule (`LinearBeta`,
    `IDDPMCosine`) with `steps == schedule.num_steps` this is exactly the
    reverse process of DDPM; with fewer steps the visited steps are evenly
    strided over the schedule's grid and `beta` is the one of the merged
    step (`1 - alpha_bar(t) / alpha_bar(s)`, as in improved DDPM's
    respacing). Continuous schedules visit `t = 1, 1 - 1/steps, ...`.

    The formulas are written for any Gaussian path
    `x_t = a_t x_0 + b_t eps` (`mean = (a_t / a_s) (b_s / b_t)**2 x_t +
    a_s (1 - snr(t) / snr(s)) pred_data`, `beta = b_t**2 - (a_t / a_s)**2
    b_s**2`), so non-variance-preserving paths such as `LinearInterpolation`
    work too.

    The last step (to `t = 0`) adds no noise: the sampler returns the data
    prediction `pred_data` made at the last visited time. This is the
    posterior mean at `t = 0` whenever the schedule is clean there (all
    discrete schedules and `LinearInterpolation`), i.e. DDPM's noiseless
    last step.

    Coupled noise: the sampler is stochastic (`stochastic` is `True`): the
    posterior `q(x_s | x_t, x_0)` it samples holds for noise independent of
    the data, so on a model trained on noise assigned to its data (linear
    assignment, KNN selection) it samples the wrong distribution (too
    narrow on Gaussian data). Use the deterministic `DDIM(eta=0)` there.

    Args:
        variance: `"posterior"` (`beta_tilde`) or `"beta"`.

    Example:

    ```python
    schedule = keras_immiscible.schedules.LinearBeta(num_steps=1000)
    sampler = keras_immiscible.samplers.DDPM()

    def denoise(x_t, t):
        # Optimal denoiser for data drawn from N(0, I), in place of a model.
        signal_rate, noise_rate = schedule(t)
        return (
            x_t * noise_rate[:, None, None, None],
            x_t * signal_rate[:, None, None, None],
        )

    initial_noise = keras.random.normal((4, 8, 8, 1), seed=0)
    images = sampler.sample(denoise, initial_noise, schedule, 100, seed=1)
    ```
    """

    kind = "denoise"

    def __init__(self, variance="posterior"):
        self.variance = arguments.check_choice(variance, "variance", VARIANCES)

    @property
    def stochastic(self):
        """Always `True`: noise is injected between steps (read-only)."""
        return True

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
            seed: None, int or `keras.random.SeedGenerator`. Seeds the
                noise injected at every step but the last.

        Returns:
            Tensor shaped like `initial_noise`: the data predicted at the
            last step.
        """
        steps, x, batch_size, times = start_run(
            denoise, "denoise", initial_noise, schedule, steps
        )
        dtype = x.dtype
        generator = seed_generator(seed)
        rates = transition_rates(schedule, times, dtype)
        if rates is not None:
            signal, noise, next_signal, next_noise = rates
            # alpha_{t|s} = a_t / a_s; sigma_{t|s}^2 = b_t^2 - alpha^2 b_s^2.
            step_signal = signal / next_signal
            step_variance = ops.maximum(
                ops.square(noise) - ops.square(step_signal * next_noise), 0.0
            )
            noise_var = ops.square(noise)
            if self.variance == "posterior":
                variance = posterior_variance(signal, noise, next_signal, next_noise)
            else:
                variance = step_variance
            x_gains = step_signal * ops.square(next_noise) / noise_var
            data_gains = next_signal * step_variance / noise_var
            sigmas = ops.sqrt(variance)

        pred_data = None
        for step in range(steps):
            t = batch_times(times[step], batch_size, dtype)
            _, pred_data = denoise(x, t)
            if step == steps - 1:
                break
            z = keras.random.normal(ops.shape(x), dtype=dtype, seed=generator)
            x = x_gains[step] * x + data_gains[step] * pred_data + sigmas[step] * z
        return pred_data

    def get_config(self):
        """Returns the constructor arguments of the sampler as a dict."""
        return {"variance": self.variance}
