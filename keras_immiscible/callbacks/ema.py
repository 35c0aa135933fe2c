"""Temporarily load the optimizer's EMA weights into a model.

With `optimizer=keras.optimizers.AdamW(..., use_ema=True)` the optimizer
keeps an exponential moving average of every trainable variable. Diffusion
models should be sampled and evaluated with those averaged weights, as
DDPM (Ho et al., 2020, arXiv 2006.11239) and the diffusion papers since do
(see the README, "Samples and FID/KID during `fit`"). `ema_weights(model)`
puts them into the model for the duration of a `with` block and restores
the training weights afterwards, also when the block raises.

How it differs from `keras.callbacks.SwapEMAWeights`: that callback *swaps*
the two sets in place (the optimizer's average variables hold the training
weights while the model holds the averages). `ema_weights` instead copies
the training weights aside (a device copy, `keras.ops.copy`), assigns the
averages to the model and copies the training weights back; the optimizer's
average variables are only read, never written.

Interaction with `SwapEMAWeights(swap_on_epoch=True)`: that callback loads
the EMA weights into the model in its `on_epoch_end` and swaps the *training*
weights into the optimizer's average slots. A callback that runs after it in
the same `on_epoch_end` and calls `ema_weights(model)` would therefore load
the training weights (a double swap). Nothing in the model or the optimizer
tells the two states apart, so it cannot be detected reliably; the order of
the callbacks decides:

- put `SampleGrid`/`GenerativeEvaluation` (default `use_ema=True`) *before*
  `SwapEMAWeights` in the `callbacks` list (recommended), or
- put them after it and pass `use_ema=False` (the model already holds the
  EMA weights then).

When fitting ends, Keras itself copies the EMA weights into the model
(`optimizer.finalize_variable_values`), so after `fit` the model holds the
EMA weights and `ema_weights(model)` changes nothing.

Backends: on JAX, `fit` keeps the training state outside the variables
during an epoch and writes it back before `on_epoch_end`; use this context
manager in epoch-level hooks (or after `fit`), not in batch-level hooks.
"""

import contextlib

import keras


def _ema_optimizers(optimizer):
    """The optimizers (inner ones for wrappers) that keep EMA weights."""
    if optimizer is None:
        return []
    if hasattr(optimizer, "inner_optimizer"):  # LossScaleOptimizer
        optimizer = optimizer.inner_optimizer
    candidates = list(getattr(optimizer, "optimizers", None) or [optimizer])
    return [
        opt
        for opt in candidates
        if getattr(opt, "use_ema", False)
        and getattr(opt, "_model_variables_moving_average", None) is not None
    ]


def ema_variable_pairs(model):
    """`[(model_variable, ema_variable), ...]` of the model's optimizer.

    Empty when the model has no optimizer, the optimizer has `use_ema=False`,
    or it has not been built yet (no training step so far).
    """
    pairs = []
    for opt in _ema_optimizers(getattr(model, "optimizer", None)):
        variables = getattr(opt, "_trainable_variables", None)
        averages = opt._model_variables_moving_average
        if variables is None or len(variables) != len(averages):
            continue
        for variable, average in zip(variables, averages):
            if average is not None:
                pairs.append((variable, average))
    return pairs


def has_ema_weights(model):
    """Whether `model.optimizer` keeps EMA weights that can be loaded."""
    return bool(ema_variable_pairs(model))


@contextlib.contextmanager
def ema_weights(model, enabled=True):
    """Context manager: the model holds its EMA weights inside the block.

    Args:
        model: a compiled `keras.Model` whose optimizer may use `use_ema`.
        enabled: `False` makes it a no-op (for callbacks' `use_ema=False`).

    Yields:
        `True` if EMA weights were loaded, `False` if there were none (no
        optimizer, `use_ema=False`, not trained yet, or `enabled=False`);
        the model is then left untouched.

    Example:

    ```python
    with ema_weights(model):
        images = model.generate(16, steps=20, seed=0)
    ```
    """
    pairs = ema_variable_pairs(model) if enabled else []
    if not pairs:
        yield False
        return
    saved = [keras.ops.copy(variable.value) for variable, _ in pairs]
    try:
        for variable, average in pairs:
            # A copy, so that no model variable shares a buffer with an
            # optimizer variable (on JAX, assigning an array shares it, and
            # a later donation of one would invalidate the other).
            variable.assign(keras.ops.copy(average.value))
        yield True
    finally:
        for (variable, _), value in zip(pairs, saved):
            variable.assign(value)
