"""Kernel Inception Distance (Binkowski et al., 2018), with bounded memory.

KID is the unbiased estimate of the squared Maximum Mean Discrepancy
between the feature distributions of real and generated images, with the
cubic polynomial kernel

    k(x, y) = (x . y / d + 1)^3          (d = feature dimension).

For m real features x_i and m generated features y_j:

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j)
            + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
            - 2/m^2      sum_{i, j}   k(x_i, y_j)

As in the paper and in the common implementations, the estimate is averaged
over `num_subsets` random subsets of `subset_size` real and `subset_size`
generated samples (drawn without replacement, independently per subset,
from a generator seeded with `seed`). When fewer samples are available, the
subset size is min(subset_size, n_real, n_generated). Unlike FID, KID is
unbiased: its expectation is 0 when both sets come from the same
distribution, so small negative values are normal.

Memory: unlike FID, KID needs the features themselves. Each set keeps at
most `max_samples` feature vectors (as float32, or float64 if the extractor
returns float64); beyond that, a uniform random sample of `max_samples` of
all the vectors seen is kept (reservoir sampling, seeded), so memory is
bounded by 2 * max_samples * d values (2 x 82 MB for the defaults and
d = 2048). The kernel sums are computed per subset in float64 on the host.
"""

import numpy as np

from keras_immiscible.metrics.feature_metric import GENERATED
from keras_immiscible.metrics.feature_metric import REAL
from keras_immiscible.metrics.feature_metric import FeatureMetric
from keras_immiscible.utils import arguments


def polynomial_kernel(x, y, degree=3, coef0=1.0):
    """(x . y^T / d + coef0)^degree in float64, shape (len(x), len(y))."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (x @ y.T / x.shape[1] + coef0) ** degree


def polynomial_mmd2_unbiased(x, y):
    """Unbiased MMD^2 between feature sets `x` (m, d) and `y` (n, d) with
    the KID kernel (x . y / d + 1)^3; m, n >= 2 (float64)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(
            f"The unbiased MMD needs at least 2 samples per set, got {m} and {n}."
        )
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return np.float64(term_xx + term_yy - 2.0 * k_xy.mean())


class _Reservoir:
    """At most `capacity` rows of a stream: all of them while they fit,
    then a uniform random sample of them (Vitter's algorithm R)."""

    def __init__(self, capacity, rng):
        self.capacity = capacity
        self.rng = rng
        self.rows = None
        self.size = 0
        self.seen = 0

    def add(self, x):
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        if self.rows is None:
            self.rows = np.empty((0, x.shape[1]), dtype=dtype)
        elif dtype == np.float64 and self.rows.dtype != np.float64:
            self.rows = self.rows.astype(np.float64)
        take = min(self.capacity - self.size, x.shape[0])
        if self.size + take > self.rows.shape[0]:
            # Grow geometrically, never beyond `capacity` rows.
            grown = min(self.capacity, max(2 * self.rows.shape[0], self.size + take))
            rows = np.empty((grown, self.rows.shape[1]), dtype=self.rows.dtype)
            rows[: self.size] = self.rows[: self.size]
            self.rows = rows
        if take:
            self.rows[self.size : self.size + take] = x[:take]
            self.size += take
            self.seen += take
        rest = x[take:]
        if rest.shape[0]:
            # Row t (0-based, over the whole stream) replaces a random slot
            # with probability capacity / (t + 1).
            positions = np.arange(self.seen, self.seen + rest.shape[0])
            slots = self.rng.integers(0, positions + 1)
            for row, slot in zip(rest, slots):
                if slot < self.capacity:
                    self.rows[slot] = row
            self.seen += rest.shape[0]

    def values(self):
        if self.rows is None:
            return np.empty((0, 0), dtype=np.float32)
        return self.rows[: self.size]


class KID(FeatureMetric):
    """Kernel Inception Distance between real and generated images.

    Args:
        feature_extractor: `None` (Inception-V3, 2048-d), `"digits"`, a
            `keras.Model` or a callable; see `FeatureMetric`.
        weights: Inception-V3 weights: `"imagenet"`, `None` or a local path.
        batch_size: images per call of the feature extractor.
        subset_size: samples per set in each subset (1000 in the paper).
        num_subsets: number of random subsets averaged (100 in the paper).
        max_samples: feature vectors kept per set; beyond that a uniform
            random sample of them is kept (see the module docstring).
        seed: seed of the subset draws and of the reservoir sampling.
        name: metric name (`"kid"`), used as `"val_kid"` by
            `callbacks.GenerativeEvaluation`.

    `result()` is the mean over subsets; `result_std()` their standard
    deviation. Cost: 3 * num_subsets * subset_size^2 * d multiply-adds in
    float64 (about 6e11 for the defaults and Inception features: seconds to
    a minute on a CPU); lower `num_subsets` for frequent evaluations.

    Not a `keras.metrics.Metric`: eager-only, host state, and
    `model.compile(metrics=[KID()])` raises a `TypeError`; evaluate it with
    `callbacks.GenerativeEvaluation` (during `fit`) or `evaluate_generator`
    (see `feature_metric`).

    Example:

    ```python
    kid = KID(feature_extractor="digits", subset_size=100, num_subsets=10)
    kid.update_state(real_images, generated_images)
    float(kid.result()), float(kid.result_std())
    ```
    """

    def __init__(
        self,
        feature_extractor=None,
        weights="imagenet",
        batch_size=64,
        subset_size=1000,
        num_subsets=100,
        max_samples=10000,
        seed=0,
        name="kid",
        dtype=None,
    ):
        for arg, value in (
            ("subset_size", subset_size),
            ("num_subsets", num_subsets),
            ("max_samples", max_samples),
        ):
            minimum = 2 if arg != "num_subsets" else 1
            arguments.check_int(value, arg, minimum=minimum)
        arguments.check_int(seed, "seed")
        self.subset_size = int(subset_size)
        self.num_subsets = int(num_subsets)
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self._reservoirs = {}
        super().__init__(
            feature_extractor=feature_extractor,
            weights=weights,
            batch_size=batch_size,
            name=name,
            dtype=dtype,
        )
        self._reset(REAL)
        self._reset(GENERATED)
        self._cached = None

    def _reset(self, side):
        offset = 0 if side == REAL else 1
        rng = np.random.default_rng([self.seed, offset])
        self._reservoirs[side] = _Reservoir(self.max_samples, rng)
        self._cached = None

    def _accumulate(self, side, features):
        self._reservoirs[side].add(features)
        self._cached = None

    def features(self, side="real"):
        """The kept feature vectors of the `"real"` or `"generated"` set."""
        if side not in (REAL, GENERATED):
            raise ValueError(f"`side` must be 'real' or 'generated', got {side!r}.")
        return self._reservoirs[side].values().copy()

    def _subset_estimates(self):
        if self._cached is not None:
            return self._cached
        self._check_counts(2)
        real = self._reservoirs[REAL].values()
        gen = self._reservoirs[GENERATED].values()
        m = min(self.subset_size, real.shape[0], gen.shape[0])
        if m == real.shape[0] == gen.shape[0]:
            # Every subset would be the whole of both sets.
            estimates = np.array([polynomial_mmd2_unbiased(real, gen)])
        else:
            rng = np.random.default_rng([self.seed, 2])
            estimates = np.empty(self.num_subsets)
            for i in range(self.num_subsets):
                x = real[rng.choice(real.shape[0], m, replace=False)]
                y = gen[rng.choice(gen.shape[0], m, replace=False)]
                estimates[i] = polynomial_mmd2_unbiased(x, y)
        self._cached = estimates
        return estimates

    def result(self):
        """Mean of the subset MMD^2 estimates (numpy float64 scalar)."""
        return np.float64(self._subset_estimates().mean())

    def result_std(self):
        """Standard deviation of the subset estimates (0 with one subset)."""
        return np.float64(self._subset_estimates().std())

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "subset_size": self.subset_size,
                "num_subsets": self.num_subsets,
                "max_samples": self.max_samples,
                "seed": self.seed,
            }
        )
        return config
