"""ODE samplers for flows (rectified flow / flow matching): Euler and Heun."""

import keras

from keras_immiscible.samplers.sampler import SamplerBase
from keras_immiscible.samplers.sampler import batch_times
from keras_immiscible.samplers.sampler import start_run
from keras_immiscible.utils import arguments

FINAL_STEPS = ("euler", "heun")


@keras.saving.register_keras_serializable(package="keras_immiscible")
class Euler(SamplerBase):
    """Euler integration of a flow from `t = 1` (noise) to `t = 0` (data).

    `velocity(x_t, t)` returns `d x_t / d t` (for
    `schedules.LinearInterpolation`, where `x_t = (1 - t) x_0 + t eps`, the
    flow-matching target `eps - x_0`). With the times
    `1 = t_0 > t_1 > ... > t_steps = 0` (uniform, `t_k = 1 - k / steps`),
    each step is

    ```
    x_{k+1} = x_k + (t_{k+1} - t_k) * velocity(x_k, t_k)
    ```

    The velocity is never evaluated at `t = 0`. The sampler is deterministic
    (`seed` is accepted and unused; `stochastic` is `False`), so it stays
    valid on models trained with assigned (coupled) noise. On the linear
    path, this is the same update as `DDIM(eta=0)` with the equivalent
    denoiser.

    Example:

    ```python
    schedule = keras_immiscible.schedules.LinearInterpolation()

    def velocity(x_t, t):
        # Exact velocity for data drawn from N(0, I), in place of a model:
        # x_t ~ N(0, (1 - t)**2 + t**2).
        t = t[:, None]
        return x_t * (2.0 * t - 1.0) / ((1.0 - t) ** 2 + t**2)

    initial_noise = keras.random.normal((16, 2), seed=0)
    samples = keras_immiscible.samplers.Euler().sample(
        velocity, initial_noise, schedule, steps=50
    )
    ```
    """

    kind = "velocity"

    def sample(self, velocity, initial_noise, schedule, steps, seed=None):
        """Integrates the flow from `initial_noise` at `t = 1` to `t = 0`.

        Args:
            velocity: callable `velocity(x_t, t) -> d x_t / d t`, with `x_t`
                of shape `(B, ...)` and `t` a float tensor of shape `(B,)`.
            initial_noise: float tensor of shape `(B, ...)`, the state at
                `t = 1`, normally drawn from `N(0, I)`.
            schedule: the schedule of the path (only its time grid is used:
                uniform, or the grid of a discrete schedule), or `None`.
            steps: int >= 1. Number of steps (velocity evaluations).
            seed: unused (the sampler is deterministic).

        Returns:
            Tensor shaped like `initial_noise`: the state at `t = 0`.
        """
        _, x, batch_size, times = start_run(
            velocity, "velocity", initial_noise, schedule, steps
        )
        for t_value, next_t_value in zip(times[:-1], times[1:]):
            t = batch_times(t_value, batch_size, x.dtype)
            x = x + (next_t_value - t_value) * velocity(x, t)
        return x


@keras.saving.register_keras_serializable(package="keras_immiscible")
class Heun(SamplerBase):
    """Heun's 2nd-order integration of a flow from `t = 1` to `t = 0`.

    `velocity(x_t, t)` returns `d x_t / d t` (see `Euler`). With the times
    `1 = t_0 > ... > t_steps = 0` and `h = t_{k+1} - t_k`, each step takes
    an Euler predictor and a trapezoidal corrector:

    ```
    v_k = velocity(x_k, t_k)
    x_pred = x_k + h * v_k
    x_{k+1} = x_k + h * (v_k + velocity(x_pred, t_{k+1})) / 2
    ```

    The global error is `O(1 / steps**2)` (Euler's is `O(1 / steps)`).
    Deterministic like `Euler` (`stochastic` is `False`).

    By default the last step (to `t = 0`) is a plain Euler step, as in
    Karras et al. (2022): the velocity is then never evaluated at `t = 0`,
    where a network that predicts the data or the noise cannot be converted
    to a velocity (division by a zero rate), and the sampler uses
    `2 * steps - 1` evaluations. On the linear path this last Euler step
    returns exactly the data prediction at `t = 1 / steps`. The accuracy
    stays of 2nd order. `final_step="heun"` corrects the last step too
    (`2 * steps` evaluations, one at `t = 0`).

    Args:
        final_step: `"euler"` (default) or `"heun"`: how to take the last
            step, to `t = 0`.

    Example:

    ```python
    schedule = keras_immiscible.schedules.LinearInterpolation()

    def velocity(x_t, t):
        t = t[:, None]
        return x_t * (2.0 * t - 1.0) / ((1.0 - t) ** 2 + t**2)

    initial_noise = keras.random.normal((16, 2), seed=0)
    samples = keras_immiscible.samplers.Heun().sample(
        velocity, initial_noise, schedule, steps=10
    )
    ```
    """

    kind = "velocity"

    def __init__(self, final_step="euler"):
        self.final_step = arguments.check_choice(final_step, "final_step", FINAL_STEPS)

    def sample(self, velocity, initial_noise, schedule, steps, seed=None):
        """Integrates the flow from `initial_noise` at `t = 1` to `t = 0`.

        Args:
            velocity: callable `velocity(x_t, t) -> d x_t / d t`, with `x_t`
                of shape `(B, ...)` and `t` a float tensor of shape `(B,)`.
            initial_noise: float tensor of shape `(B, ...)`, the state at
                `t = 1`, normally drawn from `N(0, I)`.
            schedule: the schedule of the path (only its time grid is used:
                uniform, or the grid of a discrete schedule), or `None`.
            steps: int >= 1. Number of steps.
            seed: unused (the sampler is deterministic).

        Returns:
            Tensor shaped like `initial_noise`: the state at `t = 0`.
        """
        _, x, batch_size, times = start_run(
            velocity, "velocity", initial_noise, schedule, steps
        )
        last = len(times) - 2
        for k, (t_value, next_t_value) in enumerate(zip(times[:-1], times[1:])):
            h = next_t_value - t_value
            v = velocity(x, batch_times(t_value, batch_size, x.dtype))
            x_pred = x + h * v
            if k == last and self.final_step == "euler":
                x = x_pred
                continue
            next_v = velocity(x_pred, batch_times(next_t_value, batch_size, x.dtype))
            x = x + (0.5 * h) * (v + next_v)
        return x

    def network_evaluations(self, steps):
        """Two per step, one for an Euler last step (`final_step`)."""
        return 2 * int(steps) - (1 if self.final_step == "euler" else 0)

    def get_config(self):
        """Returns the constructor arguments of the sampler as a dict."""
        return {"final_step": self.final_step}
