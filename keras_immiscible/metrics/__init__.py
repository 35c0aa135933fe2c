"""Sample-quality metrics: FID and KID, streaming, on any feature extractor.

- `FID`, `KID`: streaming metrics with `update_state(real_images,
  generated_images)`, `result()` and `reset_state()`; host float64
  statistics. Plain classes, not `keras.metrics.Metric`s: they do not go
  in `model.compile(metrics=...)` (a `TypeError` says so); use
  `callbacks.GenerativeEvaluation` or `evaluate_generator` (see
  `feature_metric`).
- Feature extractors: Inception-V3 by default (`InceptionFeatureExtractor`;
  not the TF-1 graph of published FIDs, see `feature_extractors`), the
  embedded digits classifier (`digits_feature_extractor()`), or any
  `keras.Model`/callable.
- `evaluate_generator(model, real_images, ...)`: FID/KID of a generator in
  one call.
"""

from keras_immiscible.metrics.digits_classifier import DigitsFeatureExtractor
from keras_immiscible.metrics.digits_classifier import digits_feature_extractor
from keras_immiscible.metrics.digits_classifier import load_digits_classifier
from keras_immiscible.metrics.evaluate import evaluate_generator
from keras_immiscible.metrics.evaluate import get
from keras_immiscible.metrics.feature_extractors import CallableFeatureExtractor
from keras_immiscible.metrics.feature_extractors import FeatureExtractor
from keras_immiscible.metrics.feature_extractors import InceptionFeatureExtractor
from keras_immiscible.metrics.feature_extractors import get_feature_extractor
from keras_immiscible.metrics.feature_metric import FeatureMetric
from keras_immiscible.metrics.fid import FID
from keras_immiscible.metrics.fid import frechet_distance
from keras_immiscible.metrics.kid import KID
from keras_immiscible.metrics.kid import polynomial_mmd2_unbiased
