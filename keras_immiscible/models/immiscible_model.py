"""`ImmiscibleModel`: what every model family trained with assigned noise shares.

The families (`ImmiscibleDiffusion`, `ImmiscibleFlowMatching`,
`ImmiscibleConsistency`) differ only in how a batch and its assigned noise
become a loss (`noise_loss`) and in how noise becomes images (`sample`).
Everything else lives here once: reading and checking the batch, scaling the
images, assigning the noise (the step every family shares, see
`compute_loss`), logging the assignment gain (the metric `assignment_gain`,
`keras_immiscible.assignment.assignment_gain`: positive when the assigned
noise is closer to the data), `compile`/`fit`, and the `generate` loop.
"""

import sys
import warnings

import keras
import numpy as np
from keras import ops

from keras_immiscible import assignment as assignment_lib
from keras_immiscible import samplers as samplers_lib
from keras_immiscible import schedules as schedules_lib
from keras_immiscible.backend import distribution
from keras_immiscible.backend import untie_ema_buffers
from keras_immiscible.models import generate_progress
from keras_immiscible.models import input_checks
from keras_immiscible.utils.arguments import check_number
from keras_immiscible.utils.arguments import check_positive_int
from keras_immiscible.utils.arguments import check_probability

LOSSES = ("mse", "mae")
DATA_DTYPES = ("float32", "uint8")


class ImmiscibleModel(keras.Model):
    """Base class of the generative models trained with assigned noise.

    Subclasses implement `noise_loss(data, noise, labels, training)` (the
    family's per-sample training loss, shape (B,), for a batch in [-1, 1]
    and its assigned noise) and `sample(noise, steps, sampler, seed,
    labels)` (noise to images in [-1, 1]); they may set `default_steps`, the
    default of `generate`.

    `fit`'s `sample_weight` (or a third element of the batches) weights the
    per-sample losses as Keras' losses do: `sum(w_i * loss_i) / B`. The
    model is not a function of its input: `model(x)` and `predict` raise
    and point to `generate`, which samples images.

    Batches: `images`, `(images, labels)`, or a dict with the keys
    `"images"`, and optionally `"labels"`, `"noise"` (noise assigned
    upstream, e.g. by `keras_immiscible.data.with_assigned_noise`; the model
    then skips its own assigner), `"assignment_gain"` (logged as is) and
    `"sample_weight"`.

    Args:
        network: the network, a functional `keras.Model` called as
            `network([noisy_images, noise_level])` (or with a third input,
            the int labels, for class-conditional networks), e.g.
            `keras_immiscible.layers.UNet(...)`.
        assignment: `"linear"`, `"knn"`, `None` (plain random noise) or a
            `keras_immiscible.assignment.NoiseAssigner`.
        sampler: default sampler of `generate` (a name or an instance).
        loss_type: `"mse"` or `"mae"` (families may define more).
        data_dtype: `"float32"` (images in [0, 1]) or `"uint8"`; `None`
            takes it from the first training batch.
        seed: int seed of the model's `SeedGenerator` (noise, times).
        autoencoder: `None`, or a `keras_immiscible.latent.Autoencoder`
            (e.g. `StableDiffusionVAE`) for latent diffusion: the network
            works on its latents (build it for `autoencoder.latent_shape`),
            the noise is assigned to the latents as in the papers' Stable
            Diffusion runs, `fit` takes images (encoded on the fly, with the
            posterior mean) or latents already encoded by
            `keras_immiscible.latent.encode_dataset`, and `generate` decodes
            to images in the autoencoder's image range. The model never
            trains the autoencoder (it is frozen).
        label_dropout: for class-conditional networks, the fraction of
            training labels replaced by the null label (the last row of the
            network's class embedding: `num_classes` for
            `keras_immiscible.layers.UNet(num_classes=...)`), which teaches
            the network the unconditional prediction that classifier-free
            guidance needs (`generate(guidance_scale=...)`). 0.1 is the
            usual choice; 0 (default) trains the conditional model only.
    """

    default_steps = 20
    loss_types = LOSSES

    def __init__(
        self,
        network,
        assignment="linear",
        sampler=None,
        loss_type="mse",
        data_dtype=None,
        seed=None,
        autoencoder=None,
        label_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.Model):
            raise TypeError(
                "`network` must be a keras.Model (e.g. "
                f"keras_immiscible.layers.UNet(...)), got {network!r}."
            )
        if loss_type not in self.loss_types:
            raise ValueError(
                f"`loss_type` must be one of {self.loss_types}, got {loss_type!r}."
            )
        if data_dtype is not None and data_dtype not in DATA_DTYPES:
            raise ValueError(
                f"`data_dtype` must be None or one of {DATA_DTYPES}, got "
                f"{data_dtype!r}."
            )
        self.network = network
        self.assigner = assignment_lib.get(assignment)
        self.sampler = samplers_lib.get(sampler)
        self.loss_type = loss_type
        self.data_dtype = data_dtype
        self.seed = seed
        # Keras' generator, except that tf.distribute replicas draw apart.
        self.seed_generator = distribution.ReplicaSeedGenerator(seed)
        self.image_shape, self.takes_labels = input_checks.network_spec(network)
        self.label_limit = (
            input_checks.label_limit(network) if self.takes_labels else None
        )
        self.autoencoder = self._check_autoencoder(autoencoder)
        # What `fit` takes: images (the autoencoder's, for latent models)
        # and, for latent models, latents encoded beforehand.
        self.data_shape = (
            tuple(self.autoencoder.image_shape)
            if self.autoencoder is not None
            else tuple(self.image_shape)
        )
        self.label_dropout = check_probability(
            label_dropout, "label_dropout", allow_one=False
        )
        if getattr(self.assigner, "per_class", False) and not self.takes_labels:
            raise ValueError(
                f"{self.assigner!r} assigns within classes, but the network "
                "is unconditional: build it with `num_classes` (and train on "
                "(images, labels)), or use per_class=False."
            )
        if self.label_dropout > 0.0:
            self._null_label()  # Fails early for networks without labels.
        self.assignment_tracker = keras.metrics.Mean(name="assignment_gain")
        # Running per-pixel moments of the noise the model trains on (see
        # `noise_mean`); created here so that they exist before training,
        # travel with the weights into `.keras` files, and are part of the
        # non-trainable state of the stateless (JAX) training step.
        self._noise_count = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            autocast=False,
            name="noise_count",
        )
        self._noise_mean = self.add_weight(
            shape=self.image_shape,
            initializer="zeros",
            dtype="float32",
            trainable=False,
            autocast=False,
            name="noise_mean",
        )
        self._noise_square_mean = self.add_weight(
            shape=self.image_shape,
            initializer="zeros",
            dtype="float32",
            trainable=False,
            autocast=False,
            name="noise_square_mean",
        )

    # ------------------------------------------------------ family interface

    def noise_loss(self, data, noise, labels=None, training=True):
        """Per-sample losses (B,) of `data` in [-1, 1] and its assigned noise."""
        raise NotImplementedError

    def sample(self, noise, steps, sampler, seed, labels=None):
        """Maps initial noise to data in [-1, 1] in `steps` sampler steps."""
        raise NotImplementedError

    # ----------------------------------------------------------------- keras

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=False):
        # Training happens in `compute_loss`; inside Keras' train and test
        # steps the forward pass is the identity, so that the network does
        # not run twice. Outside them the model has no output to give.
        if not getattr(self, "_in_keras_step", False):
            raise TypeError(self._not_a_function_message("model(x)"))
        return inputs

    def _not_a_function_message(self, what):
        return (
            f"{type(self).__name__} is a generative model: {what} has no "
            "images to return (the model samples from noise, it does not map "
            "inputs to outputs). Use model.generate(num_images, steps=..., "
            "seed=...) to sample images, or model.network([noisy_images, "
            "noise_level]) to call the denoiser itself."
        )

    def _keras_step(self, method, *args, **kwargs):
        """Runs a Keras training/evaluation entry point with `call` enabled."""
        previous = getattr(self, "_in_keras_step", False)
        self._in_keras_step = True
        try:
            return method(*args, **kwargs)
        finally:
            self._in_keras_step = previous

    def predict(self, *args, **kwargs):
        """Not available: raises a `TypeError` pointing to `generate`."""
        raise TypeError(self._not_a_function_message("predict(x)"))

    def predict_on_batch(self, *args, **kwargs):
        """Not available: raises a `TypeError` pointing to `generate`."""
        raise TypeError(self._not_a_function_message("predict_on_batch(x)"))

    def train_on_batch(self, x=None, *args, **kwargs):
        self._choose_jit_compile(x)
        return self._keras_step(super().train_on_batch, x, *args, **kwargs)

    def test_on_batch(self, x=None, *args, **kwargs):
        self._choose_jit_compile(x)
        return self._keras_step(super().test_on_batch, x, *args, **kwargs)

    @property
    def metrics(self):
        return super().metrics + [self.assignment_tracker]

    def compile(self, optimizer="adamw", jit_compile="auto", **kwargs):
        """Configures the model for training.

        Takes the arguments of `keras.Model.compile`; no `loss` is needed
        (the model's loss is built in). On TensorFlow, an assigner that
        runs on the host (`LinearAssignment(solver="scipy")`) cannot be
        compiled with XLA: when `fit` (or `evaluate`, `train_on_batch`) gets
        data that does not bring its own noise, the step then compiles
        without XLA and says so once. Data that brings its noise
        (`keras_immiscible.data.with_assigned_noise`) never calls the
        model's assigner and keeps the `jit_compile` asked for.
        """
        if "loss" in kwargs and kwargs["loss"] is not None:
            raise ValueError(
                f"{type(self).__name__} has its own loss; do not pass `loss` "
                "to compile(). Choose it with `loss_type=`."
            )
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        self._requested_jit_compile = self.jit_compile

    def _choose_jit_compile(self, x):
        """Turns XLA off on TensorFlow if the step will call a host assigner."""
        if keras.backend.backend() != "tensorflow" or not getattr(
            self.assigner, "on_host", False
        ):
            return
        wanted = getattr(self, "_requested_jit_compile", None)
        if not wanted:
            return
        spec = getattr(x, "element_spec", x)
        if isinstance(spec, (tuple, list)) and spec:
            spec = spec[0]
        brings_noise = isinstance(spec, dict) and "noise" in spec
        jit_compile = bool(brings_noise)
        if not brings_noise and not getattr(self, "_warned_host_jit", False):
            self._warned_host_jit = True
            warnings.warn(
                f"{self.assigner!r} solves the assignment on the host, and "
                "TensorFlow cannot compile host calls with XLA: compiling the "
                "training step with jit_compile=False instead. For an XLA "
                "step, use LinearAssignment(solver='auction'), KNNSelection(), "
                "or assign on the host in the input pipeline with "
                "keras_immiscible.data.with_assigned_noise.",
                stacklevel=3,
            )
        if self.jit_compile != jit_compile:
            self.jit_compile = jit_compile
            # Keras caches the compiled step functions.
            self.train_function = None
            self.test_function = None

    def _retrace_if_the_input_kind_changes(self, x):
        """Latent models: a new step when `fit` switches images <-> latents.

        The step encodes images and passes latents through, a choice made
        from the batch shape while tracing; a compiled step retraced for
        the other kind could lose that shape (TensorFlow relaxes the shapes
        of a retrace), so each kind gets a step of its own.
        """
        if self.autoencoder is None:
            return
        spec = getattr(x, "element_spec", x)
        if isinstance(spec, (tuple, list)) and spec:
            spec = spec[0]
        if isinstance(spec, dict):
            spec = spec.get("images")
        shape = getattr(spec, "shape", None)
        if shape is None:
            return
        kind = "latents" if tuple(shape[1:]) == tuple(self.image_shape) else ("images")
        previous = getattr(self, "_input_kind", None)
        self._input_kind = kind
        if previous is not None and previous != kind:
            self.train_function = None
            self.test_function = None

    @staticmethod
    def _check_epoch_length(x, kwargs):
        """Refuses an endless tf.data dataset without `steps_per_epoch`."""
        if kwargs.get("steps_per_epoch") is not None:
            return
        if not input_checks.is_tf_dataset(x):
            return
        import tensorflow as tf

        if int(x.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError(
                "The dataset repeats forever (e.g. `dataset.repeat()`, or "
                "`with_assigned_noise(...)` without `epochs=`), so an epoch "
                "would never end: pass `steps_per_epoch=` (the batches of one "
                "pass) to fit()."
            )

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @staticmethod
    def _carry_sample_weight(x, y, kwargs):
        """Moves `sample_weight` into a dict batch when there is no `y`.

        Keras drops `sample_weight` when `y` is None (it packs `(x,)`);
        unconditional models have no `y`, so the weights travel with the
        images under the batch key "sample_weight".
        """
        weights = kwargs.get("sample_weight")
        if weights is None or y is not None or not isinstance(x, np.ndarray):
            return x
        del kwargs["sample_weight"]
        return {"images": x, "sample_weight": np.asarray(weights)}

    def fit(self, x=None, y=None, *args, **kwargs):
        x = self._carry_sample_weight(x, y, kwargs)
        x = input_checks.check_dataset(self, x, "x")
        input_checks.check_labels_argument(self, y, "y")
        if len(args) < 11:  # `steps_per_epoch` is fit's 13th parameter.
            self._check_epoch_length(x, kwargs)
        self._choose_jit_compile(x)
        self._retrace_if_the_input_kind_changes(x)
        # A tf.data pipeline, generator or torch DataLoader shuffles itself;
        # Keras' default `shuffle=True` would only warn that it is ignored.
        # (`shuffle` is `fit`'s ninth positional parameter.)
        if (
            input_checks.shuffles_itself(x)
            and len(args) < 7
            and "shuffle" not in kwargs
        ):
            kwargs["shuffle"] = False
        try:
            return self._keras_step(super().fit, x, y, *args, **kwargs)
        finally:
            untie_ema_buffers(self)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        x = self._carry_sample_weight(x, y, kwargs)
        x = input_checks.check_dataset(self, x, "x")
        input_checks.check_labels_argument(self, y, "y")
        self._choose_jit_compile(x)
        self._retrace_if_the_input_kind_changes(x)
        return self._keras_step(super().evaluate, x, y, *args, **kwargs)

    # ---------------------------------------------------------- data scaling

    def normalize(self, images):
        """Maps images from [0, 1] (float) or [0, 255] (uint8) to [-1, 1]."""
        dtype = keras.backend.standardize_dtype(images.dtype)
        images = ops.cast(images, "float32")
        if dtype == "uint8":
            images = images / 255.0
        return images * 2.0 - 1.0

    def denormalize(self, images):
        """Maps [-1, 1] back to the caller's range and dtype."""
        images = ops.clip((images + 1.0) / 2.0, 0.0, 1.0)
        if self.data_dtype == "uint8":
            return ops.cast(ops.round(images * 255.0), "uint8")
        return images

    def _per_sample(self, values):
        """Reshapes (B,) to (B, 1, ..., 1) to broadcast against images."""
        return ops.reshape(values, (-1,) + (1,) * len(self.image_shape))

    def _network_inputs(self, noisy, noise_level, labels=None):
        """The network's inputs for a batch at per-sample `noise_level` (B,)."""
        inputs = [noisy, self._per_sample(noise_level)]
        if self.takes_labels:
            if labels is None:
                raise ValueError("The network is class-conditional: pass `labels`.")
            inputs.append(labels)
        return inputs

    def _reduce(self, error):
        """Per-sample mean (B,) of the per-element loss `loss_type`."""
        axes = tuple(range(1, len(self.image_shape) + 1))
        if self.loss_type == "mse":
            return ops.mean(ops.square(error), axis=axes)
        return ops.mean(ops.abs(error), axis=axes)

    def _batch_loss(self, per_sample, sample_weight=None):
        """The batch loss: the mean of `per_sample` (B,), or weighted.

        With `sample_weight` (B,), `sum(w_i * loss_i) / B`, Keras' default
        ("sum_over_batch_size") reduction of weighted losses.
        """
        if len(per_sample.shape) != 1:
            raise ValueError(
                f"{type(self).__name__}.noise_loss must return per-sample "
                f"losses of shape (batch,), got shape {per_sample.shape}."
            )
        if sample_weight is None:
            return ops.mean(per_sample)
        weights = ops.cast(sample_weight, "float32")
        if len(weights.shape) == 2 and weights.shape[1] == 1:
            weights = ops.squeeze(weights, axis=1)
        if len(weights.shape) != 1 or (
            weights.shape[0] is not None
            and per_sample.shape[0] is not None
            and weights.shape[0] != per_sample.shape[0]
        ):
            raise ValueError(
                "`sample_weight` must hold one weight per image, shape "
                f"(batch,), got shape {tuple(sample_weight.shape)} for a "
                f"batch of {per_sample.shape[0]}."
            )
        return ops.sum(weights * per_sample) / ops.cast(
            ops.shape(per_sample)[0], "float32"
        )

    # -------------------------------------------------------------- training

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """One training loss on a batch, with assigned noise.

        See `_batch_loss_with_assigned_noise`. Under `tf.distribute` the
        step runs per replica, and the loss is divided by the replica
        count, as Keras' own losses are
        (`keras_immiscible.backend.distribution.scale_loss`).
        """
        loss = self._batch_loss_with_assigned_noise(x, y, sample_weight, training)
        return distribution.scale_loss(loss)

    def _batch_loss_with_assigned_noise(
        self, x=None, y=None, sample_weight=None, training=True
    ):
        """One training loss on a batch, with assigned noise.

        This is where noise is assigned: the assigner draws Gaussian noise
        for the batch and pairs it with the images (unless the batch brings
        its noise, assigned upstream), then the family's `noise_loss`
        trains on that noise as plain training would on a random draw.
        With `training=True` the noise also updates the running per-pixel
        moments behind `noise_mean` and `noise_std`. `sample_weight` (B,)
        weights the per-sample losses (`sum(w_i * loss_i) / B`); the
        assignment itself is unweighted.
        """
        batch = input_checks.check_batch(self, x, y)
        images = batch["images"]
        if self.data_dtype is None and not self.is_latent_batch(images):
            self.data_dtype = (
                "uint8"
                if keras.backend.standardize_dtype(images.dtype) == "uint8"
                else "float32"
            )
        data = self.to_model_space(images)
        noise = batch.get("noise")
        labels = batch.get("labels")
        if noise is None:
            # Class-aware assigners (LinearAssignment(per_class=True)) get
            # the labels; the others keep their (data, seed) signature.
            extra = {}
            if getattr(self.assigner, "per_class", False):
                extra["labels"] = labels
            noise, gain = self.assigner(
                data, seed=self.seed_generator, return_gain=True, **extra
            )
            self.assignment_tracker.update_state(gain)
        else:
            noise = ops.cast(noise, "float32")
            if batch.get("assignment_gain") is not None:
                self.assignment_tracker.update_state(
                    ops.mean(ops.cast(batch["assignment_gain"], "float32"))
                )
        if training:
            self._track_noise(noise)
        if sample_weight is None:
            sample_weight = batch.get("sample_weight")
        if training and self.label_dropout > 0.0 and labels is not None:
            labels = self._drop_labels(labels)
        loss = self._batch_loss(
            self.noise_loss(data, noise, labels, training),
            sample_weight,
        )
        losses = [loss] + [ops.sum(extra) for extra in self.losses]
        return ops.sum(ops.stack(losses)) if len(losses) > 1 else loss

    # ------------------------------------------------------------ latents

    def _check_autoencoder(self, autoencoder):
        if autoencoder is None:
            return None
        missing = [
            name
            for name in ("encode", "decode", "image_shape", "latent_shape")
            if not hasattr(autoencoder, name)
        ]
        if missing:
            raise TypeError(
                "`autoencoder` must be a keras_immiscible.latent.Autoencoder "
                f"(encode, decode, image_shape, latent_shape); {autoencoder!r} "
                f"lacks {missing}."
            )
        latent_shape = tuple(autoencoder.latent_shape)
        if latent_shape != tuple(self.image_shape):
            raise ValueError(
                f"The network works on {tuple(self.image_shape)} inputs, but "
                f"the autoencoder's latents are {latent_shape}: build the "
                f"network for the latent shape, e.g. "
                f"UNet(image_shape={latent_shape}, ...)."
            )
        if isinstance(autoencoder, keras.Model):
            autoencoder.trainable = False
        return autoencoder

    def is_latent_batch(self, images):
        """Whether a batch holds latents (not images) of a latent model."""
        return (
            self.autoencoder is not None
            and tuple(images.shape[1:]) == (tuple(self.image_shape)) != self.data_shape
        )

    def to_model_space(self, images):
        """A batch of images (or latents) as the data the model diffuses.

        Images in [0, 1] (float) or [0, 255] (uint8) map to [-1, 1]; for a
        latent model, images are encoded (posterior mean, no gradient) and
        latents pass through as float32.
        """
        if self.autoencoder is None:
            return self.normalize(images)
        if self.is_latent_batch(images):
            return ops.cast(images, "float32")
        return ops.stop_gradient(ops.cast(self.autoencoder.encode(images), "float32"))

    def from_model_space(self, data):
        """Sampled data to the caller's images (decoded for latent models)."""
        if self.autoencoder is None:
            return self.denormalize(data)
        images = ops.cast(self.autoencoder.decode(data), "float32")
        if self.data_dtype == "uint8":
            low, high = getattr(self.autoencoder, "image_range", (0.0, 1.0))
            unit = (images - low) / (high - low)
            return ops.cast(ops.round(ops.clip(unit, 0.0, 1.0) * 255.0), "uint8")
        return images

    # ------------------------------------------------------ label dropout

    def _null_label(self):
        """The null label of classifier-free guidance (an int)."""
        if not self.takes_labels:
            raise ValueError(
                "`label_dropout` and `guidance_scale` need a class-conditional "
                "network (e.g. keras_immiscible.layers.UNet(num_classes=...))."
            )
        if self.label_limit is None:
            raise ValueError(
                "The null label of classifier-free guidance is the last row "
                "of the network's class embedding, but this network has no "
                "single keras.layers.Embedding to read it from."
            )
        return self.label_limit - 1

    def _drop_labels(self, labels):
        """Replaces a `label_dropout` fraction of `labels` by the null label."""
        uniform = distribution.draw_batch_rows(
            lambda n: keras.random.uniform((n,), seed=self.seed_generator),
            ops.shape(labels)[0],
        )
        drop = ops.reshape(uniform, (-1,) + (1,) * (len(labels.shape) - 1))
        drop = drop < self.label_dropout
        return ops.where(drop, ops.full_like(labels, self._null_label()), labels)

    # ---------------------------------------------------------- noise moments

    def _track_noise(self, noise):
        """Adds a batch of training noise (B, *image_shape) to the moments.

        Incremental (cumulative) means: `m <- m + (batch_mean - m) B / (n + B)`
        for E[x] and E[x^2]. The noise marginal does not depend on the
        weights, so every batch counts alike.
        """
        noise = ops.cast(noise, "float32")
        batch = ops.cast(ops.shape(noise)[0], "float32")
        count = self._noise_count + batch
        weight = batch / count
        mean = self._noise_mean + (ops.mean(noise, axis=0) - self._noise_mean) * weight
        square = (
            self._noise_square_mean
            + (ops.mean(ops.square(noise), axis=0) - self._noise_square_mean) * weight
        )
        self._noise_mean.assign(mean)
        self._noise_square_mean.assign(square)
        self._noise_count.assign(count)

    @property
    def noise_count(self):
        """How many noise samples (images) the moments were computed from."""
        return float(ops.convert_to_numpy(self._noise_count))

    @property
    def noise_mean(self):
        """Per-pixel mean of the noise the model trained on.

        A numpy float32 copy, shape `image_shape`, over every training batch
        so far (the noise the assigner chose, or the noise the batches
        brought). Plain noise and linear assignment (a permutation of an
        i.i.d. draw) keep it at 0 up to sampling error; KNN selection pulls
        it towards the data (design notes, "KNN's marginal"). All zeros
        before training (see `noise_count`).
        """
        return np.array(ops.convert_to_numpy(self._noise_mean))

    @property
    def noise_std(self):
        """Per-pixel standard deviation of the noise the model trained on.

        A numpy float32 copy, shape `image_shape`, from the running E[x]
        and E[x^2] (population std). 1 up to sampling error for plain noise
        and linear assignment, below 1 with KNN selection. All zeros
        before training (see `noise_count`).
        """
        mean = ops.convert_to_numpy(self._noise_mean)
        square = ops.convert_to_numpy(self._noise_square_mean)
        return np.sqrt(np.maximum(square - np.square(mean), 0.0)).astype("float32")

    def load_own_variables(self, store):
        # Models saved before the noise moments existed lack them: load the
        # other variables and start the moments from zero.
        own = self._trainable_variables + self._non_trainable_variables
        moments = (self._noise_count, self._noise_mean, self._noise_square_mean)
        moment_ids = {id(v) for v in moments}
        if len(store.keys()) == len(own) - len(moments):
            rest = [v for v in own if id(v) not in moment_ids]
            for i, variable in enumerate(rest):
                variable.assign(store[f"{i}"])
            warnings.warn(
                f"The saved {type(self).__name__} has no noise moments (it "
                "predates them): noise_mean/noise_std start from zero, and "
                "generate(initial_noise='matched') needs training first.",
                stacklevel=2,
            )
            return
        super().load_own_variables(store)

    # -------------------------------------------------------------- sampling

    def generate(
        self,
        num_images,
        steps=None,
        seed=None,
        labels=None,
        sampler=None,
        batch_size=None,
        initial_noise="standard",
        guidance_scale=None,
        verbose="auto",
    ):
        """Generates images from pure noise.

        On a model trained with assigned noise (an assigner other than
        `RandomNoise`) the image-noise joint is coupled: deterministic
        samplers (`DDIM(eta=0)`, `Euler`, `Heun`, one-step consistency
        sampling) stay valid, while stochastic ones (`DDPM`, `DDIM(eta>0)`,
        multistep consistency sampling), which draw noise independent of the
        data, sample the wrong distribution; `generate` then warns once per
        sampler (see the samplers' `is_stochastic`). Noise assigned upstream
        (`with_assigned_noise`, model `assignment=None`) is not detected.

        Args:
            num_images: how many images to generate.
            steps: number of sampler steps (default: `default_steps` of the
                model family).
            seed: int seed (>= 0) of the initial noise (and of the sampler's
                noise). The same seed gives the same images; `None` draws
                fresh noise.
            labels: int labels (num_images,) for class-conditional networks.
            sampler: override the model's default sampler (a name or a
                sampler instance).
            batch_size: generate in chunks of this size (default: all at
                once). With a deterministic sampler the images do not depend
                on it: image `i` starts from the same noise for any chunking
                (a float rounding of the network aside). A stochastic
                sampler's in-loop noise is drawn per chunk, so its images do
                depend on `batch_size`.
            initial_noise: where the sampler starts. `"standard"` (default):
                N(0, I). `"matched"`: the per-pixel Gaussian with the mean
                and std of the noise the model trained on
                (`noise_mean + noise_std * N(0, I)`). Samplers transport the
                noise the model was trained with; KNN selection shifts that
                noise towards the data and shrinks it, so a KNN-trained model
                started from N(0, I) starts off its training distribution
                (design notes, "KNN's marginal": large at low dimension,
                large k, and data with a non-zero mean). Linear assignment and
                plain noise keep N(0, I), so both choices agree there up to
                sampling error. `"matched"` needs a trained model.
            guidance_scale: classifier-free guidance weight `w` (needs
                `labels`): the network's prediction becomes
                `uncond + w * (cond - uncond)`, the unconditional prediction
                taken at the null label (see `label_dropout`). `None`
                (default) or 1 is the conditional model, 0 the
                unconditional one; values above 1 trade diversity for
                fidelity to the label. Each step then runs the network on
                twice the batch.
            verbose: `"auto"` (default: a `keras.utils.Progbar` of the
                network evaluations once the call has run for 2 seconds),
                1 (from the start) or 0 (silent).

        Returns:
            A numpy array (num_images, *image_shape) in the data's range:
            float32 in [0, 1], or uint8 when the model was trained on uint8.
        """
        moments = self._initial_noise_moments(initial_noise)
        num_images = check_positive_int(num_images, "num_images")
        steps = check_positive_int(
            self.default_steps if steps is None else steps, "steps"
        )
        labels = self._check_labels(labels, num_images)
        guidance = self._check_guidance(guidance_scale, labels)
        generate_progress.check_verbose(verbose)
        sampler = samplers_lib.get(sampler) if sampler else self.sampler
        self._warn_if_stochastic_on_coupled(sampler, int(steps))
        if batch_size is None:
            batch_size = num_images
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1
        ):
            raise ValueError(
                f"`batch_size` must be None or an integer >= 1, got {batch_size!r}."
            )
        if seed is not None and (
            isinstance(seed, bool)
            or not isinstance(seed, (int, np.integer))
            or seed < 0
        ):
            raise ValueError(f"`seed` must be None or an integer >= 0, got {seed!r}.")
        batch_size = int(batch_size)
        # The initial noise is one stream of standard normals, read chunk by
        # chunk: image i starts from the same noise whatever `batch_size` is,
        # so deterministic samplers give the same images for any chunking.
        # (The in-loop noise of stochastic samplers is drawn per chunk.)
        noise_stream = np.random.default_rng(seed)
        seed_generator = keras.random.SeedGenerator(seed)
        outputs = []
        chunks = -(-num_images // batch_size)
        evaluations = getattr(sampler, "network_evaluations", None)
        per_chunk = evaluations(int(steps)) if callable(evaluations) else steps
        self._guidance = guidance
        self._progress = generate_progress.GenerateProgress(chunks * per_chunk, verbose)
        try:
            for start in range(0, num_images, batch_size):
                outputs.append(
                    self._generate_chunk(
                        start,
                        min(batch_size, num_images - start),
                        labels,
                        noise_stream,
                        moments,
                        int(steps),
                        sampler,
                        seed_generator,
                    )
                )
        finally:
            self._guidance = None
            self._progress = None
        return np.concatenate(outputs, axis=0)

    def _generate_chunk(
        self,
        start,
        count,
        labels,
        noise_stream,
        moments,
        steps,
        sampler,
        seed_generator,
    ):
        """Images `start .. start + count` of a `generate` call (numpy)."""
        chunk_labels = None
        if labels is not None:
            chunk_labels = ops.convert_to_tensor(labels[start : start + count])
        noise = ops.convert_to_tensor(
            noise_stream.standard_normal(
                (count,) + tuple(self.image_shape), dtype=np.float32
            )
        )
        if moments is not None:
            noise = moments[0] + moments[1] * noise
        images = self.sample(noise, steps, sampler, seed_generator, chunk_labels)
        return ops.convert_to_numpy(self.from_model_space(images))

    def _check_guidance(self, guidance_scale, labels):
        """`None` (plain conditional sampling) or `(w, null_label)`."""
        guidance_scale = check_number(guidance_scale, "guidance_scale", allow_none=True)
        if guidance_scale is None:
            return None
        if labels is None:
            raise ValueError(
                "`guidance_scale` guides towards `labels`: pass `labels` "
                "(num_images,) with it."
            )
        null = self._null_label()
        if self.label_dropout == 0.0 and not getattr(self, "_warned_guidance", False):
            self._warned_guidance = True
            warnings.warn(
                "generate(guidance_scale=...) mixes in the prediction at the "
                f"null label {null}, but this model was built with "
                "label_dropout=0, so that prediction was not trained (unless "
                "the data itself carried the null label). Train with "
                "label_dropout=0.1 for classifier-free guidance.",
                UserWarning,
                stacklevel=3,
            )
        if float(guidance_scale) == 1.0:
            return None  # Exactly the conditional model.
        return float(guidance_scale), null

    def _initial_noise_moments(self, initial_noise):
        """`None` for N(0, I), or the `(mean, std)` tensors of "matched"."""
        if not isinstance(initial_noise, str) or initial_noise not in (
            "standard",
            "matched",
        ):
            raise ValueError(
                "`initial_noise` must be 'standard' (N(0, I)) or 'matched' "
                "(the per-pixel Gaussian of the training noise), got "
                f"{initial_noise!r}."
            )
        if initial_noise == "standard":
            return None
        if self.noise_count <= 0:
            raise ValueError(
                "generate(initial_noise='matched') needs the moments of the "
                "training noise, but this model has not trained yet "
                "(noise_count is 0): train it first, or use "
                "initial_noise='standard'."
            )
        return (
            ops.convert_to_tensor(self.noise_mean),
            ops.convert_to_tensor(self.noise_std),
        )

    def _warn_if_stochastic_on_coupled(self, sampler, steps):
        """Warns, once per sampler, of a stochastic sampler on coupled noise.

        A sampler that draws fresh noise between its steps (DDPM, DDIM with
        `eta > 0`, multistep consistency sampling) assumes the model's
        training noise was independent of its data; with an assigner other
        than `RandomNoise` it was not, and the sampler samples the wrong
        distribution. Samplers without `is_stochastic` are not checked.
        """
        if isinstance(self.assigner, assignment_lib.RandomNoise):
            return
        is_stochastic = getattr(sampler, "is_stochastic", None)
        if not callable(is_stochastic) or not is_stochastic(steps):
            return
        key = repr(sampler)
        warned = getattr(self, "_stochastic_sampler_warnings", ())
        if key in warned:
            return
        self._stochastic_sampler_warnings = tuple(warned) + (key,)
        if getattr(sampler, "kind", None) == "consistency":
            what = "re-noises between its steps"
            instead = "one-step sampling (steps=1)"
        else:
            what = "injects noise at every step"
            instead = "DDIM(eta=0) (sampler='ddim')"
            if isinstance(
                getattr(self, "schedule", None),
                schedules_lib.LinearInterpolation,
            ):
                instead = "sampler='euler' or 'heun' (or 'ddim', eta=0)"
        # Point at the user's call, past a family's own `generate` override.
        stacklevel, frame = 3, sys._getframe(2)
        while (
            frame is not None
            and frame.f_code.co_name == "generate"
            and (frame.f_globals.get("__name__", "").startswith("keras_immiscible"))
        ):
            stacklevel, frame = stacklevel + 1, frame.f_back
        warnings.warn(
            f"{sampler!r} {what} (steps={steps}) with noise drawn "
            "independently of the data, which assumes the model was trained "
            "on noise independent of its data. This model trained on noise "
            f"assigned to its data by {self.assigner!r}, a coupled "
            "image-noise joint, so this sampler samples the wrong "
            "distribution (too narrow on Gaussian data). Deterministic "
            f"sampling stays valid under coupling: use {instead}.",
            UserWarning,
            stacklevel=stacklevel,
        )

    def _check_labels(self, labels, num_images):
        if self.takes_labels and labels is None:
            raise ValueError(
                "The network is class-conditional: pass `labels` "
                "(num_images,) to generate()."
            )
        if labels is not None and not self.takes_labels:
            raise ValueError(
                "The network is unconditional: build it with `num_classes` "
                "to generate with `labels`."
            )
        if labels is None:
            return None
        labels = np.asarray(labels).reshape(-1)
        input_checks.check_label_values(labels, self.label_limit, "labels")
        labels = labels.astype("int32")
        if labels.shape[0] != num_images:
            raise ValueError(
                f"`labels` must have num_images={num_images} entries, got "
                f"{labels.shape[0]}."
            )
        return labels

    def _inference_network(self):
        """The network as a fast inference function (built once).

        Its output is float32, which the samplers work in, also when a
        mixed-precision network answers in float16 or bfloat16.
        """
        from keras_immiscible.backend import inference_function

        if getattr(self, "_inference_fn", None) is None:
            run = inference_function(self.network)
            self._inference_fn = lambda inputs: ops.cast(run(inputs), "float32")
        network = self._inference_fn
        guidance = getattr(self, "_guidance", None)
        if guidance is not None:
            network = self._guided(network, *guidance)
        progress = getattr(self, "_progress", None)
        if progress is not None:
            network = progress.wrap(network)
        return network

    @staticmethod
    def _guided(network, scale, null_label):
        """Classifier-free guidance around an inference function.

        One network call on the batch twice over, with its labels and with
        the null label: `uncond + scale * (cond - uncond)`.
        """

        def guided(inputs):
            noisy, level, labels = inputs
            both = network(
                [
                    ops.concatenate([noisy, noisy], axis=0),
                    ops.concatenate([level, level], axis=0),
                    ops.concatenate(
                        [labels, ops.full_like(labels, null_label)], axis=0
                    ),
                ]
            )
            cond, uncond = ops.split(both, 2, axis=0)
            return uncond + scale * (cond - uncond)

        return guided

    # --------------------------------------------------------- serialization

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "assignment": assignment_lib.serialize(self.assigner),
                "sampler": samplers_lib.serialize(self.sampler),
                "loss_type": self.loss_type,
                "data_dtype": self.data_dtype,
                "seed": self.seed,
                "autoencoder": (
                    None
                    if self.autoencoder is None
                    else keras.saving.serialize_keras_object(self.autoencoder)
                ),
                "label_dropout": self.label_dropout,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        if config.get("autoencoder") is not None:
            config["autoencoder"] = keras.saving.deserialize_keras_object(
                config["autoencoder"]
            )
        return cls(**config)
