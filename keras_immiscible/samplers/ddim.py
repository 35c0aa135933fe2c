"""Denoising Diffusion Implicit Models (DDIM) sampler.

Also home of the small helpers every sampler of the package shares: argument
checks, the time grid (exact on discrete schedules) and the rates of every
step.
"""

import keras
import numpy as np
from keras import ops


def check_steps(steps):
    """Validates `steps` (an int >= 1) and returns it as a Python int."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(
            f"`steps` must be an integer >= 1. Received: steps={steps!r}"
        )
    if steps < 1:
        raise ValueError(
            f"`steps` must be an integer >= 1. Received: steps={steps}"
        )
    return int(steps)


def time_grid(schedule, steps):
    """The `steps + 1` times a sampler visits, from `t = 1` down to `t = 0`.

    Uniform, `t_k = (steps - k) / steps`. On a discrete schedule (one with an
    int `num_steps` attribute, `T`) each time is moved to the nearest step of
    the schedule's grid, `round(t_k * T) / T` (halves rounded up): with
    `steps == T` every step is visited, with fewer steps the visited steps
    are evenly strided. More steps than `T` are refused, since the schedule
    has only `T` noise levels.

    Args:
        schedule: the schedule, or `None` (uniform grid).
        steps: int >= 1, already validated.

    Returns:
        A list of `steps + 1` Python floats, decreasing from 1.0 to 0.0.
    """
    num_steps = getattr(schedule, "num_steps", None)
    if num_steps is None:
        return [(steps - k) / steps for k in range(steps + 1)]
    num_steps = int(num_steps)
    if steps > num_steps:
        raise ValueError(
            f"`steps` must be <= the number of steps of the discrete schedule "
            f"{schedule!r} ({num_steps}). Received: steps={steps}"
        )
    # round((steps - k) * T / steps), halves up, in exact integer arithmetic.
    indices = [
        (2 * (steps - k) * num_steps + steps) // (2 * steps)
        for k in range(steps + 1)
    ]
    return [index / num_steps for index in indices]


def prepare_noise(initial_noise):
    """Converts `initial_noise` to a tensor; returns it and its batch size."""
    x = ops.convert_to_tensor(initial_noise)
    if len(ops.shape(x)) < 1:
        raise ValueError(
            "`initial_noise` must have a batch dimension. "
            f"Received shape: {ops.shape(x)}"
        )
    return x, ops.shape(x)[0]


def check_callable(name, fn):
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable. Received: {name}={fn!r}")


def seed_generator(seed):
    """A `keras.random.SeedGenerator` from `seed` (returned as is if one)."""
    if isinstance(seed, keras.random.SeedGenerator):
        return seed
    return keras.random.SeedGenerator(seed)


def batch_times(t_value, batch_size, dtype):
    """The time `t_value` repeated for every sample, shape `(batch_size,)`."""
    return ops.full((batch_size,), t_value, dtype=dtype)


def transition_rates(schedule, times, dtype):
    """Rates at both ends of every denoising transition a sampler takes.

    The schedule is evaluated once, on all visited times (float32), instead
    of at every step. Transitions go from `times[k]` to `times[k + 1]` for
    `k < len(times) - 2` (the last step, to `t = 0`, only predicts).

    Returns:
        `(a_t, b_t, a_s, b_s)`, four 1-D tensors of `dtype` (signal and noise
        rates at the start `t` and the end `s` of each transition), or `None`
        when there is no transition (a single step).
    """
    if len(times) < 3:
        return None
    signal, noise = schedule(
        ops.convert_to_tensor(np.asarray(times[:-1], dtype="float32"))
    )
    signal = ops.cast(signal, dtype)
    noise = ops.cast(noise, dtype)
    return signal[:-1], noise[:-1], signal[1:], noise[1:]


def posterior_variance(signal, noise, next_signal, next_noise):
    """Variance of `q(x_s | x_t, x_0)` for any Gaussian path, `s < t`.

    For `x_t = a_t x_0 + b_t eps` (Kingma et al., 2021, variational
    diffusion models), the Markov forward step from `s` to `t` has variance
    `b_t**2 - (a_t / a_s)**2 * b_s**2`, and the posterior variance is

    ```
    b_s**2 * (1 - snr(t) / snr(s)),  snr = a**2 / b**2
    ```

    which for variance-preserving schedules (`a**2 + b**2 = 1`) is DDPM's
    `beta_tilde = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta`. Clipped at
    0 (a schedule whose signal-to-noise ratio does not decrease has none).
    """
    ratio = (signal * next_noise) / (next_signal * noise)
    return ops.maximum(ops.square(next_noise) * (1.0 - ops.square(ratio)), 0.0)


class SamplerBase:
    """Configuration plumbing shared by the samplers of this package."""

    #: What the function passed to `sample` returns: `"denoise"` for
    #: `(pred_noise, pred_data)`, `"velocity"` for `d x_t / d t`.
    kind = "denoise"

    @property
    def stochastic(self):
        """Whether the sampler draws fresh noise between its steps.

        Such noise is drawn independently of the data, as the forward
        process of plain diffusion is: a stochastic sampler assumes the
        model was trained on noise independent of its data. With noise
        *assigned* to the data (linear assignment, KNN selection), the
        image-noise joint is coupled and only deterministic samplers
        (`DDIM(eta=0)`, `Euler`, `Heun`, one-step consistency sampling)
        still sample the data distribution; `generate` warns otherwise.
        Read-only; `False` here, subclasses that inject noise override it.
        """
        return False

    def is_stochastic(self, steps):
        """Whether a run of `steps` steps draws noise between its steps.

        `stochastic and steps > 1`: a single step only predicts, so it is
        deterministic whatever the sampler. This is what `generate` checks.

        Args:
            steps: int >= 1, the number of steps of the run.
        """
        return bool(self.stochastic) and int(steps) > 1

    def network_evaluations(self, steps):
        """How many times a run of `steps` steps calls the network (one here).

        `generate` uses it for its progress bar.

        Args:
            steps: int >= 1, the number of steps of the run.
        """
        return int(steps)

    def get_config(self):
        """Returns the constructor arguments of the sampler as a dict."""
        return {}

    @classmethod
    def from_config(cls, config):
        """Creates a sampler from the output of `get_config()`."""
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items()
        )
        return f"{self.__class__.__name__}({arguments})"


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
        steps = check_steps(steps)
        check_callable("denoise", denoise)
        times = time_grid(schedule, steps)
        x, batch_size = prepare_noise(initial_noise)
        dtype = x.dtype
        rates = transition_rates(schedule, times, dtype)
        if rates is not None:
            signal, noise, next_signal, next_noise = rates
            if self.eta > 0.0:
                generator = seed_generator(seed)
                next_noise_var = ops.square(next_noise)
                sigma_sq = ops.minimum(
                    self.eta**2
                    * posterior_variance(
                        signal, noise, next_signal, next_noise
                    ),
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
                z = keras.random.normal(
                    ops.shape(x), dtype=dtype, seed=generator
                )
                x = x + sigmas[step] * z
        return pred_data

    def get_config(self):
        """Returns the constructor arguments of the sampler as a dict."""
        return {"eta": self.eta}
