"""Host callbacks and tracing checks, per backend."""

import keras
import numpy as np


def _backend():
    return keras.backend.backend()


def is_concrete(x):
    """Whether `x` holds values now (eager), as opposed to a traced symbol."""
    if isinstance(x, (np.ndarray, np.generic, int, float)):
        return True
    if isinstance(x, keras.KerasTensor):
        return False
    backend = _backend()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and not tf.is_symbolic_tensor(x)
    if backend == "torch":
        import torch

        compiler = getattr(torch, "compiler", None)
        if compiler is not None and compiler.is_compiling():
            return False
        return True
    return True


def in_xla_context():
    """Whether TensorFlow is currently tracing a function for XLA.

    TensorFlow cannot compile Python host calls (`tf.numpy_function`) with
    XLA (`jit_compile=True`); this lets callers fail early and clearly.
    """
    if _backend() != "tensorflow":
        return False
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    graph = tf_ops.get_default_graph()
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def host_call(fn, args, shape, dtype, name="host_call"):
    """Run the numpy function `fn(*args)` on the host, from any context.

    Args:
        fn: a function of numpy arrays returning one numpy array of the
            given `shape` and `dtype`.
        args: the tensor arguments.
        shape: static shape of the result.
        dtype: numpy dtype name of the result.
        name: what to call the operation in error messages.

    Eager tensors are converted and `fn` runs directly; on JAX inside `jit`
    it runs through `jax.pure_callback`, on TensorFlow inside `tf.function`
    through `tf.numpy_function`. TensorFlow cannot compile the latter with
    XLA, so that case raises a `RuntimeError` that says what to do instead.
    """
    if all(is_concrete(a) for a in args):
        result = fn(*[keras.ops.convert_to_numpy(a) for a in args])
        return keras.ops.convert_to_tensor(np.asarray(result, dtype=dtype))
    backend = _backend()
    if backend == "jax":
        import jax

        return jax.pure_callback(
            lambda *a: np.asarray(fn(*[np.asarray(v) for v in a]), dtype=dtype),
            jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype)),
            *args,
        )
    if backend == "tensorflow":
        import tensorflow as tf

        if in_xla_context():
            raise RuntimeError(
                f"`{name}` runs on the host (numpy/scipy), and TensorFlow "
                "cannot compile host calls with XLA (`jit_compile=True`). "
                "Either compile without XLA (`model.compile(..., "
                "jit_compile=False)` or `tf.function(jit_compile=False)`), "
                "or use the on-device solver (`solver='auction'`), which "
                "compiles with XLA."
            )
        out = tf.numpy_function(
            lambda *a: np.asarray(fn(*a), dtype=dtype),
            list(args),
            Tout=tf.as_dtype(dtype),
            stateful=False,
            name=name,
        )
        out.set_shape(tuple(shape))
        return out
    # torch (eager, or a backend we do not know): go through numpy.
    result = fn(*[keras.ops.convert_to_numpy(a) for a in args])
    return keras.ops.convert_to_tensor(np.asarray(result, dtype=dtype))


_COMPILED = {}


def compiled(fn, key):
    """`fn` compiled for the current backend (XLA on JAX and TensorFlow).

    Used to run a `keras.ops` loop fast when it is called eagerly; inside an
    already compiled function the plain `fn` is traced into the caller.
    `key` identifies `fn` together with its static (Python) arguments.
    """
    backend = _backend()
    cache_key = (backend, key)
    if cache_key in _COMPILED:
        return _COMPILED[cache_key]
    if backend == "jax":
        import jax

        wrapped = jax.jit(fn)
    elif backend == "tensorflow":
        import tensorflow as tf

        wrapped = tf.function(fn, jit_compile=True, autograph=False)
    else:
        wrapped = fn
    _COMPILED[cache_key] = wrapped
    return wrapped


def inference_function(model):
    """A fast, gradient-free `inputs -> model(inputs, training=False)`.

    XLA-compiled on JAX (as a stateless call, so the current weights are
    always used) and TensorFlow, `torch.no_grad()` on PyTorch. Used by
    samplers, which call the network many times outside of `fit`.
    """
    backend = _backend()
    if backend == "jax":
        import jax

        @jax.jit
        def run(trainable, non_trainable, inputs):
            outputs, _ = model.stateless_call(
                trainable, non_trainable, inputs, training=False
            )
            return outputs

        def call(inputs):
            return run(
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                inputs,
            )

        return call
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(
            lambda inputs: model(inputs, training=False),
            jit_compile=True,
            reduce_retracing=True,
        )
    if backend == "torch":
        import torch

        def call(inputs):
            with torch.no_grad():
                return model(inputs, training=False)

        return call
    return lambda inputs: model(inputs, training=False)


def untie_ema_buffers(model):
    """Works around a Keras/JAX problem with `use_ema=True`.

    At the end of `fit`, Keras assigns the optimizer's EMA values to the
    model's variables; on JAX both then hold the *same* buffer, and the next
    `fit` (which donates its state buffers to XLA) fails with "Attempt to
    donate the same buffer twice" (seen with Keras 3.15 and a plain Dense
    model, and under `mixed_float16`, where the EMA optimizer is the inner
    optimizer of a `LossScaleOptimizer`). Copying the variables' values
    gives them buffers of their own.
    """
    if _backend() != "jax":
        return
    optimizer = getattr(model, "optimizer", None)
    # Under a mixed_float16 policy Keras wraps the optimizer in a
    # LossScaleOptimizer, whose own `use_ema` is False: look inside.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        return
    import jax.numpy as jnp

    for variable in model.variables:
        variable.assign(jnp.array(variable.value, copy=True))
