"""The base class of the samplers, and the helpers they share.

`SamplerBase` holds what every sampler of `keras_immiscible.samplers` has
in common (`kind`, `stochastic`, `is_stochastic`, `network_evaluations`,
the config round trip); the functions below check a run's arguments, build
the time grid (exact on discrete schedules) and the rates of every step.
"""

import keras
import numpy as np
from keras import ops

from keras_immiscible.utils import arguments


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
        (2 * (steps - k) * num_steps + steps) // (2 * steps) for k in range(steps + 1)
    ]
    return [index / num_steps for index in indices]


def start_run(network, network_name, initial_noise, schedule, steps):
    """Checks a `sample` call's `steps` and `network` (the `denoise` or
    `velocity` callable, named `network_name`); returns `(steps, x,
    batch_size, times)`: `steps` as an int, `initial_noise` as a tensor, its
    batch size and the run's `time_grid`."""
    steps = arguments.check_positive_int(steps, "steps")
    arguments.check_callable(network, network_name)
    times = time_grid(schedule, steps)
    x = ops.convert_to_tensor(initial_noise)
    if len(ops.shape(x)) < 1:
        raise ValueError(
            "`initial_noise` must have a batch dimension. "
            f"Received shape: {ops.shape(x)}"
        )
    return steps, x, ops.shape(x)[0], times


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
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({arguments})"
