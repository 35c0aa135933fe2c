"""`ConsistencySampler`: one-step and multistep consistency sampling."""

import itertools
import math

import keras
import numpy as np
from keras import ops

from keras_immiscible.samplers.sampler import SamplerBase
from keras_immiscible.schedules import consistency as cm
from keras_immiscible.utils import arguments

# iCT's two-step sampling schedule for CIFAR-10 (Song & Dhariwal, 2023).
TWO_STEP_SIGMA = 0.821


@keras.saving.register_keras_serializable(package="keras_immiscible")
class ConsistencySampler(SamplerBase):
    """One-step and multistep sampling of a consistency model.

    With the consistency function `f(x, sigma)` (noisy input at level
    `sigma` to clean data) and decreasing noise levels
    `sigma_0 > sigma_1 > ... > sigma_{n-1}`, starting from `z ~ N(0, I)`:

    ```
    x = sigma_0 * z
    for k in range(n):
        x0 = f(x, sigma_k)
        if k < n - 1:
            x = x0 + sqrt(sigma_{k+1}**2 - sigma_min**2) * z_k,  z_k ~ N(0, I)
    return x0
    ```

    One step (`n = 1`) is `f(sigma_max z, sigma_max)`. The levels are
    `sigmas` when given; otherwise, for `steps` steps: `(sigma_max,)` for
    one step, the paper's CIFAR-10 pair `(sigma_max, 0.821)` for two steps,
    and for more steps the first `steps` levels of the `steps + 1`-level
    Karras grid from `sigma_max` down to `sigma_min` (the last level,
    `sigma_min`, is left out: there `f` is the identity).

    Coupled noise: one step is deterministic, but every further step
    re-noises with `z_k` drawn independently of the data
    (`is_stochastic(steps)` is `steps > 1`). On a model trained on noise
    assigned to its data (linear assignment, KNN selection) the noise is
    not independent of the data, and multistep sampling samples the wrong
    distribution (too narrow on Gaussian data); sample in one step there.

    Args:
        sigmas: `None`, or a strictly decreasing sequence of noise levels in
            `(sigma_min, sigma_max]`; `generate` then takes
            `steps = len(sigmas)`.

    Example:

    ```python
    # `model` is an `ImmiscibleConsistency`; three evaluations:
    sampler = keras_immiscible.samplers.ConsistencySampler((80.0, 2.0, 0.5))
    images = model.generate(16, sampler=sampler)
    ```
    """

    kind = "consistency"

    def __init__(self, sigmas=None):
        if sigmas is not None:
            if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__len__"):
                raise TypeError(f"`sigmas` must be None or a sequence, got {sigmas!r}.")
            sigmas = [
                arguments.check_number(s, "sigmas", low=0, low_open=True)
                for s in sigmas
            ]
            if not sigmas or any(b >= a for a, b in itertools.pairwise(sigmas)):
                raise ValueError(
                    "`sigmas` must be a non-empty, strictly decreasing "
                    f"sequence of noise levels, got {sigmas}."
                )
        self.sigmas = sigmas

    @property
    def stochastic(self):
        """Whether the sampler can re-noise: `False` only for one level.

        Read-only. A run re-noises only when it has more than one step, see
        `is_stochastic(steps)`.
        """
        return self.sigmas is None or len(self.sigmas) > 1

    def sigma_sequence(self, steps, sigma_min, sigma_max, rho=cm.RHO):
        """The `steps` decreasing noise levels visited (Python floats)."""
        if self.sigmas is not None:
            if steps != len(self.sigmas):
                raise ValueError(
                    f"`steps` must equal len(sigmas) = {len(self.sigmas)} "
                    f"for {self!r}, got {steps}."
                )
            sigmas = list(self.sigmas)
        elif steps == 1:
            sigmas = [sigma_max]
        elif steps == 2 and sigma_min < TWO_STEP_SIGMA < sigma_max:
            sigmas = [sigma_max, TWO_STEP_SIGMA]
        else:
            ramp = np.linspace(0.0, 1.0, steps + 1)
            low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
            grid = (high + ramp * (low - high)) ** rho
            grid[0] = sigma_max
            sigmas = [float(s) for s in grid[:-1]]
        if sigmas[0] > sigma_max or sigmas[-1] <= sigma_min:
            raise ValueError(
                f"The sampling levels {sigmas} must lie in (sigma_min, "
                f"sigma_max] = ({sigma_min}, {sigma_max}]."
            )
        return sigmas

    def sample(
        self,
        consistency_fn,
        initial_noise,
        steps,
        seed=None,
        sigma_min=cm.SIGMA_MIN,
        sigma_max=cm.SIGMA_MAX,
        rho=cm.RHO,
    ):
        """Runs the sampler.

        Args:
            consistency_fn: `f(x, sigma)`, with `sigma` a Python float,
                returning the clean-data estimate shaped like `x`.
            initial_noise: `z ~ N(0, I)`, `(B, ...)`.
            steps: int >= 1, the number of evaluations of `f`.
            seed: int, `keras.random.SeedGenerator` or None, for the noise
                injected between steps.
            sigma_min, sigma_max, rho: the model's noise range and grid.

        Returns:
            The samples, shaped like `initial_noise`.
        """
        sigmas = self.sigma_sequence(int(steps), sigma_min, sigma_max, rho)
        if not isinstance(seed, keras.random.SeedGenerator):
            # A fresh draw at every step (an int seed would repeat it).
            seed = keras.random.SeedGenerator(seed)
        noise = ops.convert_to_tensor(initial_noise)
        x = sigmas[0] * noise
        for k, sigma in enumerate(sigmas):
            denoised = consistency_fn(x, sigma)
            if k + 1 < len(sigmas):
                scale = math.sqrt(sigmas[k + 1] ** 2 - sigma_min**2)
                x = denoised + scale * keras.random.normal(ops.shape(noise), seed=seed)
        return denoised

    def get_config(self):
        """Returns the constructor arguments of the sampler as a dict."""
        return {"sigmas": self.sigmas}
