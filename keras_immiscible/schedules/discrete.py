"""Discrete-time (DDPM-style) variance-preserving noise schedules."""

import math

import keras
import numpy as np
from keras import ops

from keras_immiscible.schedules.schedule import Schedule
from keras_immiscible.utils import arguments


@keras.saving.register_keras_serializable(package="keras_immiscible")
class DiscreteSchedule(Schedule):
    """Variance-preserving schedule defined by a table of `T` betas (DDPM).

    The forward process of Ho et al. (2020) has `T` steps,
    `q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I)`, hence
    `x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) noise` with
    `alpha_bar_i = prod_{j <= i} (1 - beta_j)` and `alpha_bar_0 = 1` (clean).

    Step `i` is the time `t = i / T`. A time `t` in `[0, 1]` maps to the step
    `round(t * T)` (clipped to `[0, T]`), so

    ```
    signal_rate(t) = sqrt(alpha_bar[round(t * T)])
    noise_rate(t) = sqrt(1 - alpha_bar[round(t * T)])
    ```

    The table lookup is a `keras.ops` gather and works on traced tensors.
    `sample_times` draws the step `i` uniformly from `{1, ..., T}` and returns
    `i / T`. The network is conditioned on the noise variance
    `noise_rate(t) ** 2 = 1 - alpha_bar`, as for `CosineSchedule`. Samplers
    read `num_steps` to walk the exact grid.

    Args:
        betas: 1-D sequence of `T >= 1` floats, each in `(0, 1)`: the
            variances `beta_1, ..., beta_T` of the forward steps.

    Example:

    ```python
    betas = np.linspace(1e-4, 0.02, 1000)
    schedule = keras_immiscible.schedules.DiscreteSchedule(betas)
    t = schedule.sample_times(4, seed=0)  # multiples of 1 / 1000
    signal_rate, noise_rate = schedule(t)
    ```
    """

    def __init__(self, betas):
        self._set_betas(betas)

    def _set_betas(self, betas):
        try:
            betas = np.asarray(betas, dtype="float64")
        except (TypeError, ValueError):
            raise TypeError(
                f"`betas` must be a 1-D sequence of floats. Received: betas={betas!r}"
            ) from None
        if betas.ndim != 1 or betas.shape[0] < 1:
            raise ValueError(
                "`betas` must be a non-empty 1-D sequence. "
                f"Received shape: {betas.shape}"
            )
        if not np.all(np.isfinite(betas)) or not np.all((betas > 0.0) & (betas < 1.0)):
            bad = betas[~((betas > 0.0) & (betas < 1.0))]
            raise ValueError(
                "Every entry of `betas` must be in (0, 1). "
                f"Received out-of-range values: {bad[:5].tolist()}"
            )
        self.betas = betas
        self.num_steps = int(betas.shape[0])
        # log(alpha_bar_i) = sum_j log(1 - beta_j), in float64; 1 - alpha_bar
        # through expm1 keeps the small noise rates near t = 0 accurate.
        log_alpha_bar = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
        self.alphas_cumprod = np.exp(log_alpha_bar)
        self._signal_table = np.sqrt(self.alphas_cumprod)
        self._noise_table = np.sqrt(-np.expm1(log_alpha_bar))

    def _indices(self, t):
        index = ops.round(t * float(self.num_steps))
        index = ops.clip(index, 0.0, float(self.num_steps))
        return ops.cast(index, "int32")

    def __call__(self, t):
        t = self._convert_time(t)
        index = self._indices(t)
        signal = ops.convert_to_tensor(self._signal_table, dtype=t.dtype)
        noise = ops.convert_to_tensor(self._noise_table, dtype=t.dtype)
        return ops.take(signal, index), ops.take(noise, index)

    def conditioning(self, t):
        _, noise_rate = self(t)
        return ops.square(noise_rate)

    def sample_times(self, batch_size, seed=None):
        """Draws training times `i / T` with `i` uniform in `{1, ..., T}`.

        Args:
            batch_size: int. Number of times to draw.
            seed: None, int, `keras.random.SeedGenerator` or backend seed
                tensor, passed as is to `keras.random.randint`.

        Returns:
            float32 tensor of shape `(batch_size,)`.
        """
        index = keras.random.randint(
            (batch_size,),
            minval=1,
            maxval=self.num_steps + 1,
            dtype="int32",
            seed=seed,
        )
        return ops.cast(index, "float32") / float(self.num_steps)

    def get_config(self):
        return {"betas": [float(b) for b in self.betas]}

    def __repr__(self):
        return f"{self.__class__.__name__}(num_steps={self.num_steps})"


@keras.saving.register_keras_serializable(package="keras_immiscible")
class LinearBeta(DiscreteSchedule):
    """The linear beta schedule of DDPM (Ho et al., 2020).

    `beta_i` grows linearly from `beta_start` (`i = 1`) to `beta_end`
    (`i = T`); see `DiscreteSchedule` for how times map to steps.

    Args:
        num_steps: int >= 1. Number of diffusion steps `T`.
        beta_start: float. First beta.
        beta_end: float. Last beta. Must satisfy
            `0 < beta_start <= beta_end < 1`.

    Example:

    ```python
    schedule = keras_immiscible.schedules.LinearBeta()  # T = 1000
    signal_rate, noise_rate = schedule([0.001, 0.5, 1.0])
    assert schedule.num_steps == 1000
    ```
    """

    def __init__(self, num_steps=1000, beta_start=1e-4, beta_end=0.02):
        num_steps = arguments.check_positive_int(num_steps, "num_steps")
        beta_start = arguments.check_number(
            beta_start,
            "beta_start",
            low=0,
            high=1,
            low_open=True,
            high_open=True,
        )
        beta_end = arguments.check_number(
            beta_end, "beta_end", low=beta_start, high=1, high_open=True
        )
        self.beta_start = beta_start
        self.beta_end = beta_end
        self._set_betas(np.linspace(beta_start, beta_end, num_steps))

    def get_config(self):
        return {
            "num_steps": self.num_steps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    def __repr__(self):
        return Schedule.__repr__(self)


@keras.saving.register_keras_serializable(package="keras_immiscible")
class IDDPMCosine(DiscreteSchedule):
    """The cosine schedule of improved DDPM (Nichol & Dhariwal, 2021).

    With `f(t) = cos(((t + offset) / (1 + offset)) * pi / 2) ** 2`, the target
    `alpha_bar(i) = f(i / T) / f(0)` defines the betas
    `beta_i = min(1 - alpha_bar(i) / alpha_bar(i - 1), max_beta)`; the
    schedule then uses `alpha_bar_i = prod_{j <= i} (1 - beta_j)` (which
    differs from `f` only where the clipping applies, near `t = 1`).

    Args:
        num_steps: int >= 1. Number of diffusion steps `T`.
        offset: float >= 0. The small offset `s` that keeps the betas near
            `t = 0` from being too small.
        max_beta: float in `(0, 1)`. Upper clip of the betas (prevents the
            singularity at `t = 1`).

    Example:

    ```python
    schedule = keras_immiscible.schedules.IDDPMCosine(num_steps=4000)
    t = schedule.sample_times(8, seed=0)
    noise_level = schedule.conditioning(t)  # 1 - alpha_bar
    ```
    """

    def __init__(self, num_steps=1000, offset=0.008, max_beta=0.999):
        num_steps = arguments.check_positive_int(num_steps, "num_steps")
        offset = arguments.check_number(offset, "offset", low=0)
        max_beta = arguments.check_number(
            max_beta, "max_beta", low=0, high=1, low_open=True, high_open=True
        )
        self.offset = offset
        self.max_beta = max_beta
        t = np.arange(num_steps + 1, dtype="float64") / num_steps
        f = np.cos((t + offset) / (1.0 + offset) * (math.pi / 2.0)) ** 2
        alpha_bar = f / f[0]
        betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
        self._set_betas(np.minimum(betas, max_beta))

    def get_config(self):
        return {
            "num_steps": self.num_steps,
            "offset": self.offset,
            "max_beta": self.max_beta,
        }

    def __repr__(self):
        return Schedule.__repr__(self)
