"""Frechet Inception Distance (Heusel et al., 2017), streaming.

FID = ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^(1/2))

between Gaussians fitted to the features of real and generated images.

Streaming and precision: each set keeps a count, a mean vector and the sum
of outer products of the deviations from the mean (the "M2" matrix), all in
numpy float64 on the host (see `feature_metric` for why not backend
variables). Batches are merged with the pairwise update of Chan, Golub and
LeVeque (1979):

    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + outer(delta, delta) * n_a * n_b / n

which, unlike a raw sum of x x^T, never subtracts two large nearly equal
numbers. Memory is O(d^2) per set (2 x 32 MB for d = 2048), independent of
the number of images. The covariance is the unbiased M2 / (n - 1), as in
the reference implementations.

Matrix square root: tr((S_r S_g)^(1/2)) equals the sum of the square roots
of the eigenvalues of the symmetric PSD matrix S_r^(1/2) S_g S_r^(1/2)
(S_r S_g is similar to it). Both steps use the symmetric eigensolver
`numpy.linalg.eigh` in float64, with round-off negative eigenvalues clipped
to 0, so there is no complex output and no need for the `eps * I` offset of
`scipy.linalg.sqrtm`-based implementations, also for singular covariances
(fewer images than feature dimensions).
"""

import numpy as np

from keras_immiscible.metrics.feature_metric import GENERATED
from keras_immiscible.metrics.feature_metric import REAL
from keras_immiscible.metrics.feature_metric import FeatureMetric


class RunningMoments:
    """Count, mean and centred second moment of a stream of vectors
    (float64, merged batch-wise with Chan et al.'s update)."""

    def __init__(self):
        self.count = 0
        self.mean = None
        self.m2 = None

    def update(self, x):
        x = np.asarray(x, dtype=np.float64)
        n_b = x.shape[0]
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def covariance(self):
        """Unbiased covariance, M2 / (n - 1)."""
        if self.count < 2:
            raise ValueError("A covariance needs at least 2 samples.")
        return self.m2 / (self.count - 1)


def _psd_sqrt(matrix):
    """Symmetric square root of a symmetric PSD matrix (float64)."""
    matrix = 0.5 * (matrix + matrix.T)
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T


def trace_sqrt_product(sigma1, sigma2):
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD matrices, in float64."""
    root1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    middle = 0.5 * (middle + middle.T)
    eigenvalues = np.linalg.eigvalsh(middle)
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Squared Frechet (2-Wasserstein) distance between two Gaussians.

    Args:
        mu1, mu2: mean vectors, shape (d,).
        sigma1, sigma2: covariance matrices, shape (d, d), symmetric PSD.

    Returns:
        `||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))`
        as a float64, clipped at 0 (round-off can make it a tiny negative).
    """
    mu1 = np.asarray(mu1, dtype=np.float64)
    mu2 = np.asarray(mu2, dtype=np.float64)
    sigma1 = np.asarray(sigma1, dtype=np.float64)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[-1] if mu1.ndim else 0
    for name, value, shape in (
        ("mu1", mu1, (d,)),
        ("mu2", mu2, (d,)),
        ("sigma1", sigma1, (d, d)),
        ("sigma2", sigma2, (d, d)),
    ):
        if value.shape != shape:
            raise ValueError(
                f"`{name}` must have shape {shape} (d = {d} from `mu1`), got "
                f"{value.shape}."
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"`{name}` contains NaN or infinite values.")
    diff = mu1 - mu2
    value = (
        diff @ diff
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )
    return np.float64(max(value, 0.0))


class FID(FeatureMetric):
    """Frechet Inception Distance between real and generated images.

    Streaming: `update_state(real_images, generated_images)` may be called
    any number of times (with either argument `None`); memory is O(d^2),
    independent of the number of images. Lower is better; 0 for identical
    feature statistics.

    Args:
        feature_extractor: `None` (Inception-V3, 2048-d), `"digits"`, a
            `keras.Model` or a callable; see `FeatureMetric`.
        weights: Inception-V3 weights: `"imagenet"`, `None` or a local path.
        batch_size: images per call of the feature extractor.
        name: metric name (`"fid"`), used as `"val_fid"` by
            `callbacks.GenerativeEvaluation`.

    Notes:
        - Absolute values depend on the extractor and on the number of
          images (FID is biased, more so with fewer images than feature
          dimensions). Compare runs with the same extractor and counts.
          Keras' Inception-V3 is not the TF-1 graph behind published FIDs:
          see `keras_immiscible.metrics.feature_extractors`.
        - Not a `keras.metrics.Metric`: eager-only, host float64 state,
          and `model.compile(metrics=[FID()])` raises a `TypeError`; use
          `callbacks.GenerativeEvaluation` or `evaluate_generator` (see
          `feature_metric`).

    Example:

    ```python
    fid = FID(feature_extractor="digits")
    fid.update_state(real_images, generated_images)
    float(fid.result())
    ```
    """

    def __init__(
        self,
        feature_extractor=None,
        weights="imagenet",
        batch_size=64,
        name="fid",
        dtype=None,
    ):
        self._moments = {REAL: RunningMoments(), GENERATED: RunningMoments()}
        super().__init__(
            feature_extractor=feature_extractor,
            weights=weights,
            batch_size=batch_size,
            name=name,
            dtype=dtype,
        )

    def _accumulate(self, side, features):
        self._moments[side].update(features)

    def _reset(self, side):
        self._moments[side] = RunningMoments()

    def statistics(self, side="real"):
        """`(mean, covariance)` (float64) of the `"real"` or `"generated"`
        features seen so far."""
        if side not in (REAL, GENERATED):
            raise ValueError(f"`side` must be 'real' or 'generated', got {side!r}.")
        moments = self._moments[side]
        if moments.count < 2:
            raise ValueError(
                f"FID needs at least 2 {side} samples, got {moments.count}."
            )
        return moments.mean.copy(), moments.covariance()

    def result(self):
        """The FID as a numpy float64 scalar."""
        self._check_counts(2)
        mu1, sigma1 = self.statistics(REAL)
        mu2, sigma2 = self.statistics(GENERATED)
        return frechet_distance(mu1, sigma1, mu2, sigma2)
