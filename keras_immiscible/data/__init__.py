"""Input data for diffusion training.

- `load_digits` / `digits_dataset`: scikit-learn's bundled 8x8 digits (no
  network needed), optionally upsampled to 16x16 or 32x32.
- `from_directory` / `from_numpy`: the user's own images.
- `load_cifar10`, `load_celeba`, `load_oxford_flowers`: tensorflow-datasets
  loaders; they never download unless `download=True`, and raise
  `DatasetNotPreparedError` when the data is missing.
- `with_assigned_noise`: a pipeline stage that assigns the noise on the host,
  ahead of the training step.

The pipelines are `tf.data.Dataset`s of float32 images in [0, 1] (or uint8),
channels last, which `model.fit` takes on every Keras backend. TensorFlow and
tensorflow-datasets are imported only when a pipeline is built.
"""

from keras_immiscible.data.assigned_noise import with_assigned_noise
from keras_immiscible.data.digits import digits_dataset
from keras_immiscible.data.digits import load_digits
from keras_immiscible.data.local import from_directory
from keras_immiscible.data.local import from_numpy
from keras_immiscible.data.tfds_loaders import DatasetNotPreparedError
from keras_immiscible.data.tfds_loaders import load_celeba
from keras_immiscible.data.tfds_loaders import load_cifar10
from keras_immiscible.data.tfds_loaders import load_oxford_flowers
