"""Evaluate a generative model against real data in one call.

`evaluate_generator(model, real_images, metrics=("fid", "kid"), ...)` is
the scripting counterpart of `callbacks.GenerativeEvaluation`; both use the
helpers below. Metrics that share a feature extractor (e.g. FID and KID on
Inception-V3) share one feature extraction per batch.
"""

import keras
import numpy as np

from keras_immiscible.metrics.feature_extractors import to_numpy
from keras_immiscible.metrics.feature_metric import FeatureMetric
from keras_immiscible.metrics.fid import FID
from keras_immiscible.metrics.kid import KID
from keras_immiscible.utils import arguments

_METRICS = {"fid": FID, "kid": KID}


def get(identifier, **kwargs):
    """Resolves `"fid"`/`"kid"` (built with `kwargs`) or passes a metric
    object through, Keras-style."""
    if isinstance(identifier, FeatureMetric):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _METRICS:
        return _METRICS[identifier.lower()](**kwargs)
    raise ValueError(
        "`metrics` entries must be 'fid', 'kid' or FID/KID metric objects "
        f"(keras_immiscible.metrics.FeatureMetric), got {identifier!r}."
    )


def resolve_metrics(
    metrics, feature_extractor=None, weights="imagenet", batch_size=64, **kwargs
):
    """A list of metric objects from names and/or objects.

    Names are built with the given `feature_extractor`, `weights` and
    `batch_size` (so `"fid"` and `"kid"` share one extractor); `kwargs` go
    to `KID` only (e.g. `subset_size`, `num_subsets`).
    """
    if isinstance(metrics, (str, FeatureMetric)):
        metrics = [metrics]
    if metrics is None or len(metrics) == 0:
        raise ValueError("`metrics` must name at least one metric ('fid', 'kid').")
    resolved = []
    for identifier in metrics:
        options = dict(
            feature_extractor=feature_extractor,
            weights=weights,
            batch_size=batch_size,
        )
        if isinstance(identifier, str) and identifier.lower() == "kid":
            options.update(kwargs)
        resolved.append(get(identifier, **options))
    names = [m.name for m in resolved]
    if len(set(names)) != len(names):
        raise ValueError(
            f"`metrics` must have distinct names, got {names}; pass "
            "`name=` to the metric constructors."
        )
    return resolved


def _first_images(element, name):
    """The images of one dataset element: `x`, `(x, ...)` or {'images': x}."""
    if isinstance(element, (tuple, list)):
        if not element:
            raise ValueError(f"`{name}` yielded an empty element.")
        return element[0]
    if isinstance(element, dict):
        for key in ("images", "image", "x"):
            if key in element:
                return element[key]
        raise ValueError(
            f"`{name}` yielded a dict without an 'images'/'image' key: "
            f"keys {sorted(element)}."
        )
    return element


def _is_array_like(data):
    if isinstance(data, np.ndarray):
        return True
    if isinstance(data, (list, tuple, dict, str, bytes)) or data is None:
        return False
    return hasattr(data, "shape") and hasattr(data, "dtype")


def iterate_image_batches(data, batch_size, limit=None, name="real_images"):
    """Yields numpy image batches from an array or a dataset.

    Args:
        data: an (N, H, W, C) array (numpy or a tensor), a `tf.data.Dataset`
            of batches, or any iterable of batches. Elements may be `x`,
            `(x, y, ...)` or dicts with an `"images"` key.
        batch_size: batch size for arrays (datasets keep their batching).
        limit: stop after this many images (`None`: all).
        name: argument name for error messages.
    """
    arguments.check_positive_int(limit, "num_real_images", allow_none=True)
    if isinstance(data, (str, bytes, dict)) or data is None:
        raise TypeError(
            f"`{name}` must be an image array, a tf.data.Dataset or an "
            f"iterable of batches, got {data!r}."
        )
    if _is_array_like(data):
        data = to_numpy(data, name)
        if data.ndim < 2:
            raise ValueError(
                f"`{name}` must be a batch of images with the sample axis "
                f"first, got shape {data.shape}."
            )
        stop = data.shape[0] if limit is None else min(limit, data.shape[0])
        for start in range(0, stop, batch_size):
            yield data[start : min(start + batch_size, stop)]
        return
    if hasattr(data, "as_numpy_iterator"):
        iterator = data.as_numpy_iterator()
    else:
        try:
            iterator = iter(data)
        except TypeError as e:
            raise TypeError(
                f"`{name}` must be an image array, a tf.data.Dataset or an "
                f"iterable of batches, got a {type(data).__name__}."
            ) from e
    seen = 0
    for element in iterator:
        batch = to_numpy(_first_images(element, name), name)
        if limit is not None:
            batch = batch[: limit - seen]
        if batch.shape[0] == 0:
            break
        seen += batch.shape[0]
        yield batch
        if limit is not None and seen >= limit:
            break


def _groups(metrics):
    """Metrics grouped by feature extractor: [(extractor, [metrics])]."""
    groups = {}
    for metric in metrics:
        extractor = metric.get_feature_extractor()
        try:
            key = ("source", extractor.source)
            hash(key)
        except TypeError:
            key = ("id", id(extractor.source))
        groups.setdefault(key, (extractor, []))[1].append(metric)
    return list(groups.values())


def update_metrics(metrics, images, side, name):
    """Feeds one batch of `side` ("real"/"generated") images to `metrics`,
    extracting features once per distinct extractor."""
    for _, group in _groups(metrics):
        features = group[0].extract_features(images, name)
        for metric in group[1:]:
            metric.check_images(images, name)
        for metric in group:
            if side == "real":
                metric.update_features(real_features=features)
            else:
                metric.update_features(generated_features=features)


def add_real_images(metrics, real_images, batch_size, num_real_images=None, verbose=1):
    """Extracts and adds the features of the real images to `metrics`."""
    target = None
    if _is_array_like(real_images):
        target = int(real_images.shape[0])
        if num_real_images is not None:
            target = min(target, num_real_images)
    elif num_real_images is not None:
        target = num_real_images
    progbar = (
        keras.utils.Progbar(target, verbose=verbose, unit_name="real image")
        if verbose
        else None
    )
    done = 0
    for batch in iterate_image_batches(
        real_images, batch_size, limit=num_real_images, name="real_images"
    ):
        update_metrics(metrics, batch, "real", "real_images")
        done += batch.shape[0]
        if progbar is not None:
            progbar.update(done)
    if done == 0:
        raise ValueError("`real_images` yielded no images.")
    if progbar is not None and target is None:
        progbar.update(done, finalize=True)
    return done


def generate_batches(model, num_images, batch_size, steps, seed, generate_kwargs=None):
    """Yields `num_images` generated images in batches.

    Batch `i` is `model.generate(n_i, steps=steps, seed=seed + i,
    **generate_kwargs)`, so the images depend on `(seed, batch_size)`.
    `generate_kwargs["labels"]` may be one label for every image or one per
    image (`num_images` of them, e.g. a balanced class list for a
    class-conditional FID): each batch then gets its own slice.
    """
    arguments.check_positive_int(num_images, "num_images")
    arguments.check_positive_int(batch_size, "batch_size")
    if not callable(getattr(model, "generate", None)):
        raise TypeError(
            "`model` must have a `generate(num_images, steps=..., seed=...)` "
            f"method, got a {type(model).__name__}."
        )
    generate_kwargs = dict(generate_kwargs or {})
    if _takes_verbose(model.generate):
        generate_kwargs.setdefault("verbose", 0)  # No progress bars in here.
    labels = per_image_labels(generate_kwargs.get("labels"), num_images)
    for i, start in enumerate(range(0, num_images, batch_size)):
        n = min(batch_size, num_images - start)
        if labels is not None:
            generate_kwargs["labels"] = labels[start : start + n]
        images = model.generate(n, steps=steps, seed=seed + i, **generate_kwargs)
        images = to_numpy(images, "model.generate(...) output")
        if images.ndim < 2 or images.shape[0] != n:
            raise ValueError(
                f"`model.generate({n}, ...)` must return {n} images, got an "
                f"array of shape {images.shape}."
            )
        yield images


def per_image_labels(labels, num_images):
    """`labels` as an array of `num_images` entries, or None if it is one
    label (or None) that every batch can take as it is."""
    if labels is None or np.ndim(labels) == 0:
        return None
    labels = np.asarray(keras.ops.convert_to_numpy(labels))
    if labels.ndim != 1 or len(labels) != num_images:
        raise ValueError(
            "`generate_kwargs['labels']` must be one label or one per "
            f"generated image ({num_images}, `num_images`), got shape "
            f"{labels.shape}."
        )
    return labels


def score_generated_images(
    metrics, model, num_images, batch_size, steps, seed, generate_kwargs, verbose, ema
):
    """Adds the features of `num_images` images generated by `model` (with
    its optimizer's EMA weights loaded if `ema`, see `ema_weights`) to
    `metrics`; returns `{metric.name: float}`."""
    from keras_immiscible.callbacks.ema import ema_weights

    progbar = (
        keras.utils.Progbar(num_images, verbose=verbose, unit_name="generated image")
        if verbose
        else None
    )
    done = 0
    with ema_weights(model, enabled=ema):
        for images in generate_batches(
            model, num_images, batch_size, steps, seed, generate_kwargs
        ):
            update_metrics(metrics, images, "generated", "generated_images")
            done += images.shape[0]
            if progbar is not None:
                progbar.update(done)
    return {metric.name: float(metric.result()) for metric in metrics}


def evaluate_generator(
    model,
    real_images,
    metrics=("fid", "kid"),
    num_images=1000,
    steps=20,
    seed=0,
    batch_size=100,
    num_real_images=None,
    feature_extractor=None,
    weights="imagenet",
    use_ema=True,
    generate_kwargs=None,
    verbose=1,
    **kid_kwargs,
):
    """FID/KID of a trained generator against real data, in one call.

    Args:
        model: a model with `generate(num_images, steps=..., seed=...)`
            returning images in the data's range (float [0, 1] or uint8).
        real_images: (N, H, W, C) array, `tf.data.Dataset` or iterable of
            batches (see `iterate_image_batches`).
        metrics: names (`"fid"`, `"kid"`) and/or metric objects. Metric
            objects are reset first.
        num_images: number of images to generate.
        steps: sampling steps, passed to `model.generate`.
        seed: sampling seed; batch `i` uses `seed + i`.
        batch_size: images per `generate` call and per feature batch.
        num_real_images: use at most this many real images (`None`: all).
        feature_extractor, weights: extractor of the metrics built from
            names (see `FID`); `"digits"` for the embedded digits.
        use_ema: load the optimizer's EMA weights while generating, if the
            model's optimizer has `use_ema=True` (see
            `keras_immiscible.callbacks.ema_weights`). After `fit` the model
            already holds them, so this matters for models evaluated
            mid-training.
        generate_kwargs: extra keyword arguments for `model.generate`,
            e.g. `labels`: one label, or one per generated image (sliced
            per batch, see `generate_batches`), and `guidance_scale`.
        verbose: 1 shows progress bars, 0 is silent.
        **kid_kwargs: options of `KID` built from `"kid"` (`subset_size`,
            `num_subsets`, `max_samples`).

    Returns:
        `{metric.name: float}`, e.g. `{"fid": 12.3, "kid": 0.004}`.

    Example:

    ```python
    scores = evaluate_generator(model, load_digits(split="test"),
                                feature_extractor="digits", num_images=360)
    ```
    """
    metrics = resolve_metrics(
        metrics,
        feature_extractor=feature_extractor,
        weights=weights,
        batch_size=batch_size,
        **kid_kwargs,
    )
    for metric in metrics:
        metric.reset_state()
    add_real_images(metrics, real_images, batch_size, num_real_images, verbose)
    return score_generated_images(
        metrics,
        model,
        num_images,
        batch_size,
        steps,
        seed,
        generate_kwargs,
        verbose,
        use_ema,
    )


def _takes_verbose(function):
    """Whether `function` accepts a `verbose` keyword (`ImmiscibleModel.generate`)."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "verbose" in parameters
