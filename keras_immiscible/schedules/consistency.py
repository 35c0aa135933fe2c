"""Noise levels, curriculum and loss weights of improved consistency training.

Plain functions (no state) implementing the formulas of *Improved Techniques
for Training Consistency Models* (Song & Dhariwal, 2023, "iCT"), on top of
the EDM parametrization (Karras et al., 2022). They take Python numbers or
tensors and are written with `keras.ops`, so they run inside a compiled
training step on every backend. `keras_immiscible.ImmiscibleConsistency`
is built from them.

Notation (the paper's defaults): `sigma_min = 0.002`, `sigma_max = 80`,
`rho = 7`, `sigma_data = 0.5`, curriculum `s0 = 10`, `s1 = 1280`, lognormal
`P_mean = -1.1`, `P_std = 2.0`. Noise levels are indexed from 0 here:
`sigma_0 = sigma_min < sigma_1 < ... < sigma_{N-1} = sigma_max` (the
paper's `sigma_1 ... sigma_N`).
"""

import math

from keras import ops

from keras_immiscible.utils import arguments

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5
RHO = 7.0
INITIAL_LEVELS = 10
FINAL_LEVELS = 1280
P_MEAN = -1.1
P_STD = 2.0
HUBER_SCALE = 0.00054


def _float(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def karras_sigma(index, num_levels, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """Noise level `index` of the `num_levels`-level Karras discretisation.

    ```
    sigma_i = (sigma_min**(1/rho)
               + i / (N - 1) * (sigma_max**(1/rho) - sigma_min**(1/rho)))**rho
    ```

    for `i = 0, ..., N - 1` (the paper's `i - 1`). The two ends are returned
    exactly as `sigma_min` and `sigma_max` (not through the power, which
    rounds in float32), so that the consistency function's boundary
    condition `f(x, sigma_min) = x` holds exactly on the grid. Indices past
    `N - 1` are clamped to `N - 1`.

    Args:
        index: int or int tensor (any shape), 0-based level indices.
        num_levels: int or int tensor `N >= 2` (broadcastable to `index`).
        sigma_min: smallest noise level.
        sigma_max: largest noise level.
        rho: the discretisation's exponent.

    Returns:
        float32 tensor shaped like `index`.

    Example:

    ```python
    sigmas = karras_sigma(keras.ops.arange(11), 11)  # 0.002 ... 80.0
    ```
    """
    index = _float(index)
    last = _float(num_levels) - 1.0
    index = ops.minimum(index, last)
    low = sigma_min ** (1.0 / rho)
    high = sigma_max ** (1.0 / rho)
    sigma = ops.power(low + index / last * (high - low), rho)
    sigma = ops.where(ops.equal(index, 0.0), sigma_min, sigma)
    return ops.where(ops.equal(index, last), sigma_max, sigma)


def karras_sigmas(num_levels, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """All `num_levels` noise levels of the Karras grid, increasing.

    Args:
        num_levels: Python int `N >= 2`.
        sigma_min: smallest noise level.
        sigma_max: largest noise level.
        rho: the discretisation's exponent.

    Returns:
        float32 tensor `(N,)`, from `sigma_min` to `sigma_max`.
    """
    num_levels = int(num_levels)
    if num_levels < 2:
        raise ValueError(
            f"`num_levels` must be an integer >= 2. Received: {num_levels}"
        )
    return karras_sigma(ops.arange(num_levels), num_levels, sigma_min, sigma_max, rho)


def curriculum_interval(
    total_steps, initial_levels=INITIAL_LEVELS, final_levels=FINAL_LEVELS
):
    """Training steps `K'` between two doublings of the number of levels.

    `K' = floor(K / (log2(floor(s1 / s0)) + 1))`, with `K` the total number
    of training steps. `K'` is at least 1 (runs shorter than the number of
    curriculum stages double at every step).

    Args:
        total_steps: Python int `K >= 1`.
        initial_levels: `s0`.
        final_levels: `s1 >= s0`.

    Returns:
        Python int.
    """
    stages = math.log2(math.floor(final_levels / initial_levels)) + 1.0
    return max(math.floor(total_steps / stages), 1)


def curriculum_num_levels(
    step, total_steps, initial_levels=INITIAL_LEVELS, final_levels=FINAL_LEVELS
):
    """Number of noise levels `N(k)` of the discretisation at training step k.

    `N(k) = min(s0 * 2**floor(k / K'), s1) + 1` (the iCT exponential
    curriculum), `K'` from `curriculum_interval`.

    Args:
        step: int or int tensor `k >= 0`, the training step (0-based).
        total_steps: Python int `K`, the planned length of training.
        initial_levels: `s0`.
        final_levels: `s1`.

    Returns:
        int32 tensor shaped like `step`.

    Example:

    ```python
    curriculum_num_levels(0, 400_000)        # 11
    curriculum_num_levels(50_000, 400_000)   # 21
    curriculum_num_levels(400_000, 400_000)  # 1281
    ```
    """
    interval = curriculum_interval(total_steps, initial_levels, final_levels)
    step = ops.convert_to_tensor(step)
    doublings = ops.floor_divide(ops.cast(step, "int32"), interval)
    # Capped so that 2**doublings stays exact and finite in float32.
    doublings = ops.minimum(doublings, 60)
    levels = initial_levels * ops.power(2.0, ops.cast(doublings, "float32"))
    levels = ops.minimum(levels, float(final_levels))
    return ops.cast(levels, "int32") + 1


def index_probabilities(
    num_levels,
    max_levels=None,
    sigma_min=SIGMA_MIN,
    sigma_max=SIGMA_MAX,
    rho=RHO,
    p_mean=P_MEAN,
    p_std=P_STD,
):
    """Probabilities of the training pairs `(sigma_i, sigma_{i+1})`.

    iCT's discretised lognormal: for `i = 0, ..., N - 2`

    ```
    p(i) ~ erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std))
           - erf((ln sigma_i - P_mean) / (sqrt(2) P_std))
    ```

    normalised to sum to 1: the mass a lognormal `ln sigma ~ N(P_mean,
    P_std**2)` puts on `[sigma_i, sigma_{i+1})`, renormalised to the grid.

    Args:
        num_levels: int or int tensor `N >= 2`.
        max_levels: Python int, the fixed output size plus one (e.g. `s1 + 1`)
            when `N` is a tensor: entries `i >= N - 1` are 0. Defaults to
            `num_levels` (which must then be a Python int).
        sigma_min, sigma_max, rho: the Karras grid.
        p_mean, p_std: mean and standard deviation of `ln sigma`.

    Returns:
        float32 tensor `(max_levels - 1,)`.
    """
    if max_levels is None:
        max_levels = int(num_levels)
    index = ops.arange(max_levels - 1)
    low = karras_sigma(index, num_levels, sigma_min, sigma_max, rho)
    high = karras_sigma(index + 1, num_levels, sigma_min, sigma_max, rho)
    scale = math.sqrt(2.0) * p_std
    mass = ops.erf((ops.log(high) - p_mean) / scale) - ops.erf(
        (ops.log(low) - p_mean) / scale
    )
    valid = ops.less(_float(index), _float(num_levels) - 1.0)
    mass = ops.where(valid, ops.maximum(mass, 0.0), 0.0)
    return mass / ops.sum(mass)


def loss_weight(sigma, sigma_next):
    """iCT's loss weighting `lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)`."""
    return 1.0 / (_float(sigma_next) - _float(sigma))


def edm_scalings(sigma, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN):
    """The consistency model's scalings `(c_skip, c_out, c_in)`.

    `f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, .)`, with

    ```
    c_skip = sigma_data**2 / ((sigma - sigma_min)**2 + sigma_data**2)
    c_out  = sigma_data (sigma - sigma_min) / sqrt(sigma_data**2 + sigma**2)
    c_in   = 1 / sqrt(sigma**2 + sigma_data**2)
    ```

    `c_skip(sigma_min) = 1` and `c_out(sigma_min) = 0` exactly, which
    enforces the boundary condition `f(x, sigma_min) = x`.

    Args:
        sigma: float or tensor of noise levels.
        sigma_data: standard deviation of the data.
        sigma_min: the smallest noise level (the boundary).

    Returns:
        `(c_skip, c_out, c_in)`, float32 tensors shaped like `sigma`.
    """
    sigma = _float(sigma)
    offset = sigma - sigma_min
    var_data = sigma_data**2
    c_skip = var_data / (ops.square(offset) + var_data)
    c_out = sigma_data * offset / ops.sqrt(var_data + ops.square(sigma))
    c_in = 1.0 / ops.sqrt(ops.square(sigma) + var_data)
    return c_skip, c_out, c_in


def noise_conditioning(sigma, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
    """The noise-level input of the network, `c_noise(sigma)`.

    EDM feeds `0.25 ln(sigma)` to a Fourier/positional embedding, which
    for `sigma` in `[0.002, 80]` spans `[-1.55, 1.10]`. The
    `keras_immiscible.layers.SinusoidalEmbedding` of our UNet uses
    frequencies from 1 to 1000 (periods 1 down to 0.001): it resolves a
    conditioning in an interval shorter than 1, and with few embedding
    dimensions (e.g. 8: frequencies 1, 10, 100, 1000, all integers) inputs
    one apart get the *same* embedding. So `ln(sigma)` (an affine function of
    EDM's `c_noise`) is mapped linearly onto `[0.1, 0.9]`:

    ```
    c_noise = 0.1 + 0.8 (ln s - ln sigma_min) / (ln sigma_max - ln sigma_min)
    ```

    That keeps the ends apart under the lowest frequency and leaves the
    highest ones to resolve neighbouring levels of the finest grid
    (adjacent levels near `sigma_min` differ by ~1.5e-3 at `N = 1281`, 1.5
    periods of the highest frequency).

    Args:
        sigma: float or tensor of noise levels in `[sigma_min, sigma_max]`.
        sigma_min, sigma_max: the range of noise levels.

    Returns:
        float32 tensor shaped like `sigma`.
    """
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    scaled = (ops.log(_float(sigma)) - log_min) / (log_max - log_min)
    return 0.1 + 0.8 * scaled


def pseudo_huber_c(dim, scale=HUBER_SCALE):
    """iCT's pseudo-Huber constant `c = 0.00054 sqrt(d)` for `d` dimensions.

    E.g. `d = 3072` (CIFAR-10) gives `c = 0.0299`, `d = 64` gives 0.00432.
    """
    return scale * math.sqrt(arguments.check_positive_int(dim, "dim"))


def pseudo_huber(x, y, c):
    """Per-sample pseudo-Huber distance `sqrt(||x - y||**2 + c**2) - c`.

    The squared norm runs over all axes but the first (the batch).

    Args:
        x, y: float tensors `(B, ...)`.
        c: the constant `c > 0` (see `pseudo_huber_c`).

    Returns:
        float32 tensor `(B,)`.
    """
    diff = _float(x) - _float(y)
    axes = tuple(range(1, len(ops.shape(diff))))
    squared = ops.sum(ops.square(diff), axis=axes)
    return ops.sqrt(squared + c * c) - c
