"""
Title: Going multi-device
Author: keras-immiscible contributors
Date created: 2026/12/01
Last modified: 2026/12/01
Description: Immiscible training on several devices with keras.distribution (JAX) and tf.distribute (TensorFlow): global or per-device assignment, the lines that change.
Accelerator: None (CPU)
"""

"""
## Introduction

The papers' Stable Diffusion runs trained on 8 GPUs with a global batch of
2048, and their code all-gathers the noise and the distance rows so that
one process solves the assignment for the whole global batch. In
keras-immiscible nothing about the model changes on several devices: you
use the distribution engine Keras already has for your backend, and choose
what one assignment covers with `LinearAssignment(scope=...)`:

- `scope="global"` (default): one assignment over the global batch, the
  papers' recipe. The assigned noise does not depend on the device count.
- `scope="replica"`: each device assigns its own shard, with no
  communication. The solve grows faster than linearly with the batch, so at
  large per-device batches this is much cheaper, for a slightly smaller
  distance reduction.

`KNNSelection` is per sample and has no scope. This guide trains the same
tiny model on 1 and 4 devices, on the CPU with virtual devices, so that it
runs anywhere; on GPUs or TPUs only the device list changes.
"""

"""
## Setup

Virtual CPU devices must exist before the backend starts: JAX reads
`XLA_FLAGS` when it is imported, TensorFlow splits its CPU before first use
(`host_devices` does it). On real accelerators skip both: the devices are
there.
"""

import contextlib
import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import keras
import numpy as np

import keras_immiscible as ki
from keras_immiscible.backend.distribution import host_devices

SMOKE = os.environ.get("KI_GUIDE_SMOKE") == "1"
BACKEND = keras.backend.backend()
devices = host_devices(4)
print("backend", BACKEND, "devices", len(devices))

batch_size = 16 if SMOKE else 128
epochs = 2 if SMOKE else 20
images = ki.data.load_digits()[: 2 * batch_size if SMOKE else None]

"""
## The lines that change

A small helper returns what each engine needs around model creation.

- **JAX**: `keras.distribution.set_distribution(DataParallel(devices))`
  before the model is built. The training step then sees the *global*
  batch as an array sharded over the devices; `scope="global"` is one
  assignment over it (XLA moves the rows), `scope="replica"` runs the
  assignment once per shard with `jax.shard_map`. For several hosts, call
  `jax.distributed.initialize()` first; the devices are then all hosts'.
  `ModelParallel` layouts work the same way: the assignment follows the
  mesh's batch axis.
- **TensorFlow**: build and compile the model under
  `tf.distribute.MirroredStrategy(devices).scope()`
  (`MultiWorkerMirroredStrategy` on several hosts, `TPUStrategy` on TPUs).
  The step runs once per replica on its rows: `scope="replica"` assigns
  them as they are, `scope="global"` all-gathers the replicas' rows, solves
  the global batch on every replica and keeps its slice.
- **PyTorch**: Keras has no distribution API for the torch backend
  (`keras.distribution` is JAX-only); `fit` runs on one device. A custom
  loop with `torch.nn.parallel.DistributedDataParallel` can call the model,
  but every process then assigns its own batch (like `scope="replica"`):
  the library does not gather across torch processes.
"""


def distributed(num_devices):
    """A context in which to build, compile and fit on `num_devices`."""
    if BACKEND == "jax":
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices[:num_devices])
            if num_devices > 1
            else None
        )
        return contextlib.nullcontext()  # nothing else to enter
    if BACKEND == "tensorflow":
        import tensorflow as tf

        if num_devices == 1:
            return tf.distribute.get_strategy().scope()
        if num_devices not in STRATEGIES:  # one strategy per device set
            STRATEGIES[num_devices] = tf.distribute.MirroredStrategy(
                devices[:num_devices]
            )
        return STRATEGIES[num_devices].scope()
    raise SystemExit("This guide needs the JAX or TensorFlow backend.")


STRATEGIES = {}


def tiny_network():
    if SMOKE:  # two convolutions: the smoke run is about the plumbing
        noisy, level = keras.Input((8, 8, 1)), keras.Input((1, 1, 1))
        hidden = keras.layers.Conv2D(8, 3, padding="same")(noisy)
        hidden = keras.layers.Activation("relu")(hidden + level)
        output = keras.layers.Conv2D(1, 3, padding="same")(hidden)
        return keras.Model([noisy, level], output)
    return ki.layers.UNet(image_shape=(8, 8, 1), widths=(16, 32), block_depth=1)


def train(num_devices, assignment):
    with distributed(num_devices):
        keras.utils.set_random_seed(0)
        model = ki.ImmiscibleFlowMatching(tiny_network(), assignment=assignment, seed=0)
        # TensorFlow cannot XLA-compile a MirroredStrategy step over
        # *virtual CPU* devices (any model); on GPUs and TPUs keep "auto".
        virtual_tf = BACKEND == "tensorflow" and num_devices > 1
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            jit_compile=False if virtual_tf else "auto",
        )
        history = model.fit(images, batch_size=batch_size, epochs=epochs, verbose=0)
    return model, history.history


"""
## One device and four, global scope

With the same seed and the same global batch, the global assignment on 4
devices pairs exactly the noise of 1 device. On JAX the whole loss history
matches (the step is one program over the global batch). On TensorFlow
each replica draws its own timesteps (Keras' seed generator is copied to
every replica; the model offsets it per replica), so the histories are two
valid runs rather than one; the assigned noise is still the one-device
noise.
"""

_, one = train(1, ki.assignment.LinearAssignment(scope="global"))
_, four = train(4, ki.assignment.LinearAssignment(scope="global"))
difference = np.max(np.abs(np.subtract(one["loss"], four["loss"])))
print(f"1 device final loss {one['loss'][-1]:.5f}")
print(f"4 devices final loss {four['loss'][-1]:.5f}")
print(f"max loss difference 1 vs 4 devices {difference:.3g}")

"""
## Per-device assignment

`scope="replica"` solves four problems of a quarter of the batch. Each
pairs noise only within its own shard, so the distance reduction
(`assignment_gain`) is smaller: the papers measured 1.93% at B=128 and
2.44% at B=1024 on CIFAR-10, so the loss is small once shards hold a few
hundred images.
"""

_, replica = train(4, ki.assignment.LinearAssignment(scope="replica"))
print(f"global scope assignment_gain {four['assignment_gain'][-1]:.4f}")
print(f"replica scope assignment_gain {replica['assignment_gain'][-1]:.4f}")

"""
## A step with no host call, for TPUs

scipy runs on the host: on JAX through a callback, on TensorFlow through
`tf.numpy_function`, which XLA cannot compile (the model then compiles its
step with `jit_compile=False`). TPUs need the whole step on the device:
use `solver="auction"` or `KNNSelection`, both written in `keras.ops`.
"""

model, auction = train(4, ki.assignment.LinearAssignment(solver="auction"))
print(f"auction on 4 devices final loss {auction['loss'][-1]:.5f}")
print("jit_compile", model.jit_compile)

"""
## Mixed precision and input pipelines

`keras.mixed_precision.set_global_policy("mixed_bfloat16")` (or
`"mixed_float16"`, with Keras' loss scaling) changes nothing in the
assignment: the model hands the assigner float32 data, and the cost is
computed in float32.

On TensorFlow the assignment can also run in the input pipeline with
`ki.data.with_assigned_noise(dataset)`: it assigns each *global* batch on
the host before `fit` splits it over the replicas, so it is a global
assignment, and the step itself stays free of host calls:

```python
with strategy.scope():
    model = ki.ImmiscibleFlowMatching(network, assignment=None)
    model.compile(optimizer="adam")
model.fit(ki.data.with_assigned_noise(dataset, seed=0, epochs=10), epochs=10)
```
"""

"""
## Where next

- `docs/benchmarks/multi_device.md`: step time and the assignment's share
  at 1, 2 and 4 devices for both scopes and backends.
- `guides/choosing_an_assigner.py`: which assigner and solver to use.
"""
