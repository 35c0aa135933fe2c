"""Input data: the embedded digits data set (no network needed)."""

from keras_immiscible.data.digits import load_digits
