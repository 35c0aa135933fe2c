"""Multi-device training: which rows of the global batch each device holds.

The one place where the library talks to a backend's distribution engine
(`keras.distribution` on JAX, `tf.distribute` on TensorFlow). Nothing here
orchestrates devices: Keras and the engine do that. This module only
answers, from inside a training step, "which rows of the global batch are
mine?", and runs a function over the global batch or over each device's
shard of it.

The two engines see a step differently:

- JAX with `keras.distribution.DataParallel` / `ModelParallel` (and
  multi-process `jax.distributed`): the step is one program over the
  *global* batch, a sharded array. An operation over the batch is global by
  itself (XLA inserts the collectives); a per-device operation needs
  `jax.shard_map` over the mesh's batch axis.
- TensorFlow with `tf.distribute` (`MirroredStrategy`,
  `MultiWorkerMirroredStrategy`, `TPUStrategy`): the step runs once per
  replica on that replica's rows. A per-replica operation is the default; a
  global one needs an all-gather of the rows and each replica then keeps
  its slice of the result.

Two TensorFlow details matter for assigned noise:

- Keras' `SeedGenerator` state is the same on every replica, so a draw of
  the local batch's shape gives *every replica the same noise* (and the
  same timesteps). `draw_rows` draws the global batch's noise from the
  shared seed (identical on every replica, so nothing has to be sent) and
  keeps this replica's rows: the noise equals the one-device draw of the
  same global batch. `ReplicaSeedGenerator` gives the model's other draws
  (timesteps, label dropout) a different seed on every replica.
- Keras' built-in losses divide by the number of replicas (gradients are
  summed across replicas); a model that computes its own loss must do the
  same (`scale_loss`).
"""

import contextlib
import threading
import warnings

import keras


def _backend():
    return keras.backend.backend()


# ---------------------------------------------------------------- TensorFlow


def _tf_replica_context():
    """The TF replica context of a step running under a multi-replica strategy.

    None outside `tf.distribute` (or with one replica), and in cross-replica
    context.
    """
    if _backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def _tf_rows(context, local_rows):
    """(global row count, this replica's first row) in a TF replica context.

    The replicas' batch sizes are gathered, so an uneven last batch (which
    `tf.distribute` splits unevenly) still maps to the right rows.
    """
    import tensorflow as tf

    sizes = context.all_gather(tf.reshape(tf.cast(local_rows, tf.int32), (1,)), axis=0)
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica])
    return tf.reduce_sum(sizes), offset


# -------------------------------------------------------------------- JAX


def _jax_batch_mesh():
    """(jax Mesh, batch axis name) of the current `keras.distribution`.

    None without a distribution, or when its batch axis has one device.
    """
    if _backend() != "jax":
        return None
    current = keras.distribution.distribution()
    if current is None:
        return None
    axis = getattr(current, "batch_dim_name", None)
    device_mesh = getattr(current, "device_mesh", None)
    if axis is None or device_mesh is None:
        return None
    mesh = device_mesh.backend_mesh
    if mesh.shape.get(axis, 1) <= 1:
        return None
    return mesh, axis


# ----------------------------------------------------------------- public


def num_replicas():
    """How many devices the batch is split over in the current step.

    The `tf.distribute` replicas in sync inside a TensorFlow replica
    context; the size of the batch axis of `keras.distribution`'s mesh on
    JAX; 1 otherwise (one device, PyTorch, or no distribution).
    """
    context = _tf_replica_context()
    if context is not None:
        return int(context.num_replicas_in_sync)
    mesh = _jax_batch_mesh()
    if mesh is not None:
        return int(mesh[0].shape[mesh[1]])
    return 1


def scale_loss(loss):
    """Divides a TF per-replica loss by the number of replicas in sync.

    `tf.distribute` sums the replicas' gradients; Keras' own losses divide
    by the replica count (`keras.losses.Loss`), and so must a model that
    computes its loss itself. Keras' loss tracker undoes the division for
    the logged value. The identity on JAX (one global program), PyTorch and
    one replica.
    """
    if _backend() != "tensorflow":
        return loss
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return loss
    count = tf.distribute.get_strategy().num_replicas_in_sync
    if count <= 1:
        return loss
    return loss * keras.ops.cast(1.0 / count, loss.dtype)


_THREAD = threading.local()


@contextlib.contextmanager
def _global_draws():
    """Within it, `ReplicaSeedGenerator` draws the same seed on every replica.

    Thread-local: `tf.distribute.MirroredStrategy` traces each replica's
    step in a thread of its own.
    """
    previous = getattr(_THREAD, "global_draws", False)
    _THREAD.global_draws = True
    try:
        yield
    finally:
        _THREAD.global_draws = previous


@keras.saving.register_keras_serializable(package="keras_immiscible")
class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A `keras.random.SeedGenerator` whose draws differ per TF replica.

    Keras' `SeedGenerator` holds the same state on every `tf.distribute`
    replica, so a draw inside the step (timesteps, label dropout, plain
    noise) is the *same* on every replica, each for its own images. This
    generator offsets the first seed word by the replica's index inside a
    TF replica context with several replicas; everywhere else (one device,
    JAX, whose step draws for the global batch, PyTorch) and inside
    `draw_rows` it is Keras' generator, draw for draw.

    Args:
        seed: the initial seed (int), as for `keras.random.SeedGenerator`.
        name: the generator's name (default `"seed_generator"`).

    Example:

    >>> generator = ReplicaSeedGenerator(0)
    >>> t = keras.random.uniform((batch,), seed=generator)
    """

    # Large and odd: model seeds a few apart do not meet another replica's.
    _STRIDE = 1_000_003

    def __init__(self, seed=None, name=None, **kwargs):
        super().__init__(seed=seed, name=name or "seed_generator", **kwargs)

    def next(self, ordered=True):
        seed = super().next(ordered=ordered)
        context = _tf_replica_context()
        if context is None or getattr(_THREAD, "global_draws", False):
            return seed
        replica = keras.ops.cast(context.replica_id_in_sync_group, seed.dtype)
        zero = keras.ops.zeros((), seed.dtype)
        return seed + keras.ops.stack([replica * self._STRIDE, zero])


def draw_rows(draw, data):
    """This device's rows of a draw made for the global batch.

    Args:
        draw: `shape -> tensor`, e.g. `lambda s: keras.random.normal(s,
            seed=generator)`; called with the global batch's shape.
        data: this device's batch (B, ...): all of it on JAX (the step sees
            the global batch), this replica's rows on TensorFlow.

    Returns:
        `draw(data.shape)` on one device and on JAX; in a TF replica
        context, rows `[offset, offset + B)` of `draw((B_global, ...))`,
        where the offset is the number of rows of the replicas before this
        one. Every replica makes the same draw from the same seed, so the
        result equals the one-device draw of the same global batch, and no
        noise has to be sent between devices.

    Example:

    >>> noise = draw_rows(
    ...     lambda shape: keras.random.normal(shape, seed=generator), data)
    """
    if _tf_replica_context() is None:
        return draw(keras.ops.shape(data))
    import tensorflow as tf

    def draw_global(total):
        return draw(tf.concat([tf.reshape(total, (1,)), tf.shape(data)[1:]], 0))

    rows = draw_batch_rows(draw_global, tf.shape(data)[0])
    return tf.ensure_shape(rows, data.shape)


def draw_batch_rows(draw, batch_size):
    """This device's rows of a per-sample draw made for the global batch.

    Like `draw_rows`, for draws whose rows are not shaped like the data
    (timesteps, label dropout): `draw(n)` returns a tensor with n rows.

    Args:
        draw: `n -> tensor (n, ...)`, e.g. `lambda n: keras.random.uniform(
            (n,), seed=generator)`.
        batch_size: this device's number of rows (a tensor or an int).

    Returns:
        `draw(batch_size)` on one device and on JAX; in a TF replica
        context, rows `[offset, offset + batch_size)` of `draw(B_global)`,
        so that every replica's draws equal the one-device draws of the
        same global batch.

    Example:

    >>> t = draw_batch_rows(
    ...     lambda n: keras.random.uniform((n,), seed=generator), 32)
    """
    context = _tf_replica_context()
    if context is None:
        return draw(batch_size)
    total, offset = _tf_rows(context, batch_size)
    with _global_draws():
        full = draw(total)
    return full[offset : offset + batch_size]


def over_replicas(fn, *args):
    """Runs `fn(*args)` separately on each device's shard of the batch.

    Args:
        fn: a function of batch-major tensors (B, ...) returning one
            batch-major tensor with the same number of rows.
        *args: tensors whose first axis is the batch (None passes through).

    On JAX under a `keras.distribution` whose batch axis spans several
    devices, `fn` runs through `jax.shard_map` over that axis: each device
    sees its own rows and nothing is communicated (other mesh axes, e.g. a
    `ModelParallel` model axis, hold copies of the rows and compute the
    same result). On TensorFlow the step already runs per replica, so `fn`
    runs as is; likewise on one device and on PyTorch.

    Example:

    >>> noise = over_replicas(solve, data, candidates)  # one solve a device
    """
    mesh = _jax_batch_mesh()
    if mesh is None:
        return fn(*args)
    import jax
    from jax.sharding import PartitionSpec

    mesh, axis = mesh
    devices = mesh.shape[axis]
    present = [i for i, a in enumerate(args) if a is not None]
    rows = args[present[0]].shape[0]
    if rows is not None and rows % devices:
        raise ValueError(
            f"scope='replica' splits the batch over the {devices} devices of "
            f"the distribution's '{axis}' axis, but the batch has {rows} "
            "rows: use a global batch size divisible by the device count, "
            "or scope='global'."
        )

    def on_shard(*tensors):
        full = list(args)
        for i, tensor in zip(present, tensors):
            full[i] = tensor
        return fn(*full)

    spec = PartitionSpec(axis)
    mapped = jax.shard_map(
        on_shard,
        mesh=mesh,
        in_specs=tuple(spec for _ in present),
        out_specs=spec,
        check_vma=False,
    )
    return mapped(*[args[i] for i in present])


def _gather(context, tensor):
    """All replicas' rows of `tensor`, in replica order (static row shape)."""
    gathered = context.all_gather(tensor, axis=0)
    gathered.set_shape((None,) + tuple(tensor.shape[1:]))
    return gathered


_WARNED_TORCH = []


def _warn_if_torch_processes():
    """Says once that torch processes assign their own batches."""
    if _backend() != "torch" or _WARNED_TORCH:
        return
    import torch.distributed

    if not (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        return
    _WARNED_TORCH.append(True)
    warnings.warn(
        "scope='global': on the torch backend Keras has no distribution "
        "engine, and keras-immiscible does not gather across "
        "torch.distributed processes: each of the "
        f"{torch.distributed.get_world_size()} processes assigns its own "
        "batch (as scope='replica' would).",
        stacklevel=4,
    )


def over_global_batch(fn, *args):
    """Runs `fn(*args)` once over the global batch; returns this device's rows.

    Args:
        fn: a function of batch-major tensors (B, ...) returning one
            batch-major tensor with the same number of rows.
        *args: tensors whose first axis is the batch (None passes through).

    On JAX the step already sees the global batch (a sharded array), so `fn`
    runs as is and XLA moves the rows it needs. In a TF replica context the
    rows of every replica are all-gathered (`ReplicaContext.all_gather`),
    every replica computes `fn` on the global batch (the same inputs, so the
    same result), and keeps its own rows of the result. One device,
    PyTorch: `fn(*args)`.

    Example:

    >>> noise = over_global_batch(solve, data, candidates)
    """
    context = _tf_replica_context()
    if context is None:
        _warn_if_torch_processes()
        return fn(*args)
    import tensorflow as tf

    present = [a for a in args if a is not None]
    local = tf.shape(present[0])[0]
    _, offset = _tf_rows(context, local)
    gathered = [None if a is None else _gather(context, a) for a in args]
    result = fn(*gathered)
    rows = result[offset : offset + local]
    shape = (present[0].shape[0],) + tuple(result.shape[1:])
    return tf.ensure_shape(rows, shape)


def host_devices(count):
    """Names `count` virtual CPU devices for tests, guides and benchmarks.

    Must run before the backend touches a device: JAX reads
    `XLA_FLAGS=--xla_force_host_platform_device_count=N` when it starts (set
    it in the environment before importing keras); TensorFlow splits the
    physical CPU into `count` logical devices here. Returns the device
    names to pass to `tf.distribute.MirroredStrategy` (TensorFlow) or the
    JAX devices (JAX).

    Args:
        count: the number of devices.

    Example:

    >>> devices = host_devices(4)
    >>> strategy = tf.distribute.MirroredStrategy(devices)  # TensorFlow
    """
    backend = _backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * count
            )
        except RuntimeError:  # already initialized: enough devices?
            if len(tf.config.list_logical_devices("CPU")) < count:
                raise
        return [f"/cpu:{i}" for i in range(count)]
    if backend == "jax":
        import jax

        devices = jax.devices("cpu")
        if len(devices) < count:
            raise RuntimeError(
                f"JAX has {len(devices)} CPU devices, {count} wanted: set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={count} "
                "before importing JAX."
            )
        return devices[:count]
    raise RuntimeError(
        f"No virtual devices on the {backend!r} backend: Keras distributes "
        "training with keras.distribution on JAX and tf.distribute on "
        "TensorFlow."
    )
