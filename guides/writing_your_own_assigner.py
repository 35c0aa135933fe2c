"""
Title: Writing your own assigner
Author: keras-immiscible contributors
Date created: 2026/11/26
Last modified: 2026/11/26
Description: The noise assigner interface, with a greedy assigner written in keras.ops, checked against scipy, trained with, saved and loaded.
Accelerator: None (CPU)
"""

"""
## Introduction

An *assigner* decides which Gaussian noise every image of a training batch
is diffused with. The library ships plain noise (`RandomNoise`), the exact
linear assignment of Immiscible Diffusion (`LinearAssignment`) and the
k-nearest selection of its follow-up (`KNNSelection`). This guide writes a
new one: a **greedy assignment**, which repeatedly pairs the closest
remaining (image, noise) pair. It is simpler than an optimal solver, runs on
the device in `keras.ops`, and gets most of the distance reduction.

Along the way we cover the whole interface: `draw`, `assign`, `unassigned`,
`on_host`, serialization, a check against an exact solver, training and
saving a model that uses it.
"""

"""
## Setup
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np
import scipy.optimize
from keras import ops

import keras_immiscible as ki
from keras_immiscible.assignment import NoiseAssigner

SMOKE = os.environ.get("KI_GUIDE_SMOKE") == "1"
OUTPUT_DIR = os.path.join("outputs", "writing_your_own_assigner")
os.makedirs(OUTPUT_DIR, exist_ok=True)

"""
## The interface

A model calls its assigner once per training step, inside the compiled
step, as `noise, gain = assigner(data, seed=seed_generator,
return_gain=True)`. `NoiseAssigner.__call__` checks `data` (the batch,
already scaled to [-1, 1]) and runs three methods you may override:

- `draw(data, seed)`: the candidate noise, by default one standard Gaussian
  per sample, shape `data.shape`. `KNNSelection` draws `k` per sample.
- `assign(data, candidates)`: the noise each sample trains with, shape
  `data.shape`. This is where the pairing happens.
- `unassigned(candidates)`: what plain diffusion would have used; the
  relative reduction of the mean data-noise distance from it to the
  assigned noise (`keras_immiscible.assignment.assignment_gain`, positive
  when the assigned noise is closer) is logged as `assignment_gain`.

And one attribute: `on_host` (default `False`). Set it to `True` when
`assign` leaves the device (numpy or scipy through a host callback, as
`LinearAssignment(solver="scipy")` does); on TensorFlow the model then
compiles its step without XLA, which cannot compile host calls.

Write `assign` with `keras.ops` only: it then runs eagerly and inside the
compiled step of every backend. Make the object serializable like any Keras
object: `register_keras_serializable` and a `get_config` that returns the
constructor's arguments (the base class's `from_config` calls
`cls(**config)`).

## A greedy assigner

Start from the `(B, B)` matrix of squared distances between images and
noises. In each of `B` rounds, take the smallest entry whose row (image) and
column (noise) are both still free, and pair them. With `order="batch"`
the images instead pick, one after the other in batch order, their nearest
free noise: cheaper rounds (`B` values instead of `B^2`), worse pairs for
the last images. Either way every noise is used once, so, as with linear
assignment, the result is a permutation of a Gaussian draw.
"""

ORDERS = ("global", "batch")


@keras.saving.register_keras_serializable(package="my_assigners")
class GreedyAssignment(NoiseAssigner):
    """Pairs images and noises greedily, closest pair first.

    Args:
        order: `"global"` (pair the closest free image-noise pair, B times)
            or `"batch"` (each image, in batch order, takes its nearest free
            noise).

    Example:

    >>> noise, gain = GreedyAssignment()(images, seed=0, return_gain=True)
    """

    def __init__(self, order="global"):
        if order not in ORDERS:
            raise ValueError(f"`order` must be one of {ORDERS}, got {order!r}.")
        self.order = order

    def assign(self, data, candidates):
        cost = ki.ops.pairwise_distance(data, candidates)  # (B, B), sq. L2
        n = cost.shape[0]
        if n is None:
            raise ValueError("GreedyAssignment needs a static batch size.")
        taken_penalty = ops.max(cost) + 1.0  # makes taken rows/columns lose
        positions = ops.arange(n, dtype="int32")

        def round_(step, state):
            free_rows, free_cols, columns = state
            col_penalty = (1.0 - free_cols) * taken_penalty
            if self.order == "batch":
                row = ops.cast(step, "int32")
                line = ops.take(cost, row, axis=0) + col_penalty
                col = ops.cast(ops.argmin(line), "int32")
            else:
                masked = cost + col_penalty[None, :]
                masked = masked + ((1.0 - free_rows) * taken_penalty)[:, None]
                flat = ops.cast(ops.argmin(ops.reshape(masked, (-1,))), "int32")
                row, col = flat // n, flat % n
            free_rows = ops.where(positions == row, 0.0, free_rows)
            free_cols = ops.where(positions == col, 0.0, free_cols)
            columns = ops.where(positions == row, col, columns)
            return free_rows, free_cols, columns

        ones = ops.ones((n,), dtype=cost.dtype)
        state = (ones, ones, ops.zeros((n,), dtype="int32"))
        _, _, columns = ops.fori_loop(0, n, round_, state)
        return ops.take(candidates, columns, axis=0)

    def get_config(self):
        return {"order": self.order}


"""
`draw` and `unassigned` keep their defaults: one Gaussian noise per image,
and plain diffusion would have used it as drawn.

## Check it against a reference and against the optimum

A test of an assigner needs an independent reference. The greedy rule is a
few lines of numpy; `scipy.optimize.linear_sum_assignment` gives the optimal
total distance, which no permutation can beat. We use a batch of digits
(scaled to [-1, 1] as the model does) and call the two halves of the
assigner ourselves, so that all methods see the same candidates.
"""


def greedy_reference(cost, order):
    cost = np.array(cost, dtype="float64")
    n = len(cost)
    columns = np.zeros(n, dtype=int)
    free_rows, free_cols = np.ones(n, bool), np.ones(n, bool)
    for step in range(n):
        if order == "batch":
            row = step
            col = np.flatnonzero(free_cols)[np.argmin(cost[row, free_cols])]
        else:
            masked = np.where(free_rows[:, None] & free_cols[None, :], cost, np.inf)
            row, col = np.unravel_index(np.argmin(masked), masked.shape)
        columns[row], free_rows[row], free_cols[col] = col, False, False
    return columns


images = ki.data.load_digits()
batch = ops.convert_to_tensor(images[:64] * 2.0 - 1.0)
candidates = GreedyAssignment().draw(batch, seed=0)
cost = ki.ops.pairwise_distance(batch, candidates)
cost = ops.convert_to_numpy(cost).astype("float64")
noise_np = ops.convert_to_numpy(candidates)
rows = np.arange(len(cost))
optimum = cost[rows, scipy.optimize.linear_sum_assignment(cost)[1]].sum()
unassigned = np.trace(cost)
for order in ORDERS:
    assigned = ops.convert_to_numpy(GreedyAssignment(order).assign(batch, candidates))
    columns = greedy_reference(cost, order)
    matches = np.allclose(assigned, noise_np[columns])
    total = cost[rows, columns].sum()
    share = (unassigned - total) / (unassigned - optimum)
    print(
        f"order={order}: matches numpy {matches}, total distance {total:.1f} "
        f"(optimum {optimum:.1f}, unassigned {unassigned:.1f}), "
        f"share of the optimal reduction {share:.3f}"
    )

"""
The greedy pairs are never better than the optimum (share at most 1), and
the global order gets most of the reduction the exact solver finds.

## Train with it

Pass the assigner to the model like a built-in one. `fit` logs its
`assignment_gain`, the relative reduction of the mean image-noise L2
distance.
"""

keras.utils.set_random_seed(0)
dataset = ki.data.from_numpy(images[:512] if SMOKE else images, batch_size=64, seed=0)
network = ki.layers.UNet(
    image_shape=(8, 8, 1),
    widths=(16, 32) if SMOKE else (32, 64),
    block_depth=1 if SMOKE else 2,
)
model = ki.ImmiscibleDiffusion(network, assignment=GreedyAssignment(), seed=0)
model.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=0.99))
history = model.fit(dataset, epochs=1 if SMOKE else 30, verbose=2)
print(f"greedy assignment_gain: {history.history['assignment_gain'][-1]:.4f}")

"""
## Save and load

The assigner is part of the model's configuration. Because the class is
registered, `load_model` rebuilds it from its config; the code that defines
it must be imported before loading (here it is in the same script).
"""

samples = model.generate(16, steps=10, seed=0)
path = os.path.join(OUTPUT_DIR, "greedy.keras")
model.save(path)
reloaded = keras.models.load_model(path)
again = reloaded.generate(16, steps=10, seed=0)
print(f"reloaded assigner: {reloaded.assigner!r}")
print(f"max sample difference after reloading: {np.abs(again - samples).max():.2e}")

"""
The config round trip works without a model too: `ki.assignment.serialize`
gives a dict, and `ki.assignment.get` (which also resolves `"linear"`,
`"knn"` and `None`) turns it back into an assigner.
"""

config = ki.assignment.serialize(GreedyAssignment("batch"))
print(config["class_name"], config["config"], "->", ki.assignment.get(config))

"""
## Going further

- The assigner also runs in the input pipeline:
  `ki.data.with_assigned_noise(dataset, assignment=GreedyAssignment())`
  assigns on the host while the accelerator trains (see "Choosing an
  assigner").
- For a solver that needs numpy or scipy, call it through
  `keras_immiscible.backend.host_call` inside `assign` and set
  `on_host = True`.
- To draw more candidates than samples (as `KNNSelection` does), override
  `draw` and `unassigned` too: `unassigned` must return one noise per
  sample, the one plain diffusion would have used.
"""
