"""Callbacks for training generative models with `fit`.

- `BackupAndRestore`: `keras.callbacks.BackupAndRestore` with the same
  arguments, made exact: a run killed mid-epoch and restarted ends as the
  uninterrupted run; non-finite states are never backed up.
- `SampleGrid`: PNG grid (and optional TensorBoard image) of samples every N
  epochs.
- `GenerativeEvaluation`: FID/KID every N epochs, written to `logs` as
  `val_fid`/`val_kid` for `ModelCheckpoint`, `EarlyStopping`, `CSVLogger`
  and `TensorBoard` (put it before them in the list).
- `ema_weights(model)`: context manager that loads the optimizer's EMA
  weights (`use_ema=True`) for the duration of a block; both callbacks use
  it. See its module for the interaction with `keras.callbacks.SwapEMAWeights`.
"""

from keras_immiscible.callbacks.backup_and_restore import BackupAndRestore
from keras_immiscible.callbacks.ema import ema_weights
from keras_immiscible.callbacks.ema import has_ema_weights
from keras_immiscible.callbacks.generative_evaluation import GenerativeEvaluation
from keras_immiscible.callbacks.sample_grid import SampleGrid
