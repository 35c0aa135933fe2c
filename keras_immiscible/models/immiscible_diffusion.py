"""`ImmiscibleDiffusion`: a diffusion model trained with assigned noise."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_immiscible import assignment as assignment_lib
from keras_immiscible.backend import inference_function
from keras_immiscible.backend import untie_ema_buffers
from keras_immiscible import samplers as samplers_lib
from keras_immiscible import schedules as schedules_lib
from keras_immiscible.models import input_checks

PREDICTIONS = ("epsilon", "v", "x0")
LOSSES = ("mse", "mae")
DATA_DTYPES = ("float32", "uint8")


@keras.saving.register_keras_serializable(package="keras_immiscible")
class ImmiscibleDiffusion(keras.Model):
    """A denoising diffusion model trained with immiscible noise assignment.

    Every training step draws Gaussian noise for the batch, *assigns* it to
    the images with the assigner (linear assignment or k-nearest selection,
    see `keras_immiscible.assignment`), draws diffusion times, noises the
    batch and trains the network to predict the *assigned* noise (or `v`, or
    the clean data). Everything downstream of the assignment is plain
    diffusion, and so is sampling (`generate`).

    Data: images as float in [0, 1] or uint8 in [0, 255], channels last. The
    model maps them to [-1, 1] itself, and `generate` returns images in the
    caller's range and dtype (the dtype seen by the first `fit`).

    The training step is written once for all backends: it lives in
    `compute_loss`, and Keras' own `train_step` computes the gradients.
    `model(x)` returns `x` unchanged; use `generate` to sample.

    Args:
        network: the denoiser, a `keras.Model` called as
            `network([noisy_images, noise_level])` (or with a third input,
            the int labels, for class-conditional networks), e.g.
            `keras_immiscible.layers.UNet(...)`.
        schedule: a `keras_immiscible.schedules.Schedule` or its name.
            Defaults to the continuous cosine schedule of the keras.io DDIM
            example.
        assignment: `"linear"` (exact linear assignment on the host),
            `"knn"` (k-nearest selection on the device), `None` (plain
            diffusion), or a `keras_immiscible.assignment.NoiseAssigner`.
        prediction: what the network predicts: `"epsilon"` (the noise),
            `"v"` (`signal * noise - noise_rate * data`) or `"x0"` (the data).
        sampler: default sampler of `generate`, e.g. `"ddim"` or
            `keras_immiscible.samplers.DDIM(eta=1.0)`.
        loss_type: `"mse"` or `"mae"` between prediction and target.
        data_dtype: `"float32"` (images in [0, 1]) or `"uint8"`; `None`
            takes it from the first training batch.
        seed: int seed of the model's `SeedGenerator` (noise, times).

    Example:

    ```python
    import keras, keras_immiscible as ki
    net = ki.layers.UNet(image_shape=(8, 8, 1), widths=(32, 64), block_depth=1)
    model = ki.ImmiscibleDiffusion(net, assignment="linear")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True))
    model.fit(ki.data.load_digits(), batch_size=128, epochs=1)
    samples = model.generate(16, steps=20, seed=0)  # float32 in [0, 1]
    ```
    """

    def __init__(
        self,
        network,
        schedule=None,
        assignment="linear",
        prediction="epsilon",
        sampler="ddim",
        loss_type="mse",
        data_dtype=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.Model):
            raise TypeError(
                "`network` must be a keras.Model (e.g. "
                f"keras_immiscible.layers.UNet(...)), got {network!r}."
            )
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}."
            )
        if loss_type not in LOSSES:
            raise ValueError(
                f"`loss_type` must be one of {LOSSES}, got {loss_type!r}."
            )
        if data_dtype is not None and data_dtype not in DATA_DTYPES:
            raise ValueError(
                f"`data_dtype` must be None or one of {DATA_DTYPES}, got "
                f"{data_dtype!r}."
            )
        self.network = network
        self.schedule = schedules_lib.get(schedule)
        self.assigner = assignment_lib.get(assignment)
        self.sampler = samplers_lib.get(sampler)
        self.prediction = prediction
        self.loss_type = loss_type
        self.data_dtype = data_dtype
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.image_shape, self.num_classes_input = input_checks.network_spec(
            network
        )
        self.assignment_tracker = keras.metrics.Mean(name="assignment_gain")

    # ----------------------------------------------------------------- keras

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=False):
        # Training happens in `compute_loss`; the forward pass is identity so
        # that Keras' `train_step` does not run the network twice.
        return inputs

    @property
    def metrics(self):
        return super().metrics + [self.assignment_tracker]

    def compile(self, optimizer="adamw", jit_compile="auto", **kwargs):
        """Configures the model for training.

        Takes the arguments of `keras.Model.compile`; no `loss` is needed
        (the diffusion loss is built in). On TensorFlow, an assigner that
        runs on the host (`LinearAssignment(solver="scipy")`) cannot be
        compiled with XLA: the model then compiles without XLA and says so.
        """
        if "loss" in kwargs and kwargs["loss"] is not None:
            raise ValueError(
                "ImmiscibleDiffusion has its own diffusion loss; do not pass "
                "`loss` to compile(). Choose it with `loss_type=`."
            )
        if (
            keras.backend.backend() == "tensorflow"
            and jit_compile in ("auto", True)
            and getattr(self.assigner, "on_host", False)
        ):
            warnings.warn(
                f"{self.assigner!r} solves the assignment on the host, and "
                "TensorFlow cannot compile host calls with XLA: compiling the "
                "training step with jit_compile=False instead. For an XLA "
                "step, use LinearAssignment(solver='auction') or "
                "KNNSelection().",
                stacklevel=2,
            )
            jit_compile = False
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, **kwargs):
        x = input_checks.check_dataset(self, x, "x")
        try:
            return super().fit(x, y, *args, **kwargs)
        finally:
            untie_ema_buffers(self)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        x = input_checks.check_dataset(self, x, "x")
        return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------- diffusion math

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

    def _rates(self, t):
        signal_rate, noise_rate = self.schedule(t)
        return self._per_sample(signal_rate), self._per_sample(noise_rate)

    def _network_inputs(self, noisy, t, labels=None):
        inputs = [noisy, self._per_sample(self.schedule.conditioning(t))]
        if self.num_classes_input:
            if labels is None:
                raise ValueError(
                    "The network is class-conditional: pass `labels`."
                )
            inputs.append(labels)
        return inputs

    def split_prediction(self, prediction, noisy, signal_rate, noise_rate):
        """Converts the network output into `(pred_noise, pred_data)`."""
        if self.prediction == "epsilon":
            pred_noise = prediction
            pred_data = (noisy - noise_rate * pred_noise) / signal_rate
        elif self.prediction == "x0":
            pred_data = prediction
            pred_noise = (noisy - signal_rate * pred_data) / noise_rate
        else:  # v = signal * noise - noise_rate * data, signal^2 + noise^2 = 1
            pred_data = signal_rate * noisy - noise_rate * prediction
            pred_noise = noise_rate * noisy + signal_rate * prediction
        return pred_noise, pred_data

    def training_target(self, data, noise, signal_rate, noise_rate):
        """The regression target of the network for `self.prediction`."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return data
        return signal_rate * noise - noise_rate * data

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """One diffusion training loss on a batch, with assigned noise."""
        images, labels = input_checks.check_batch(self, x, y)
        if self.data_dtype is None:
            self.data_dtype = (
                "uint8"
                if keras.backend.standardize_dtype(images.dtype) == "uint8"
                else "float32"
            )
        data = self.normalize(images)
        noise, change = self.assigner(
            data, seed=self.seed_generator, return_change=True
        )
        batch_size = ops.shape(data)[0]
        t = self.schedule.sample_times(batch_size, seed=self.seed_generator)
        signal_rate, noise_rate = self._rates(t)
        noisy = signal_rate * data + noise_rate * noise
        prediction = self.network(
            self._network_inputs(noisy, t, labels), training=training
        )
        target = self.training_target(data, noise, signal_rate, noise_rate)
        error = ops.cast(prediction, "float32") - target
        if self.loss_type == "mse":
            loss = ops.mean(ops.square(error))
        else:
            loss = ops.mean(ops.abs(error))
        self.assignment_tracker.update_state(-change)
        losses = [loss] + [ops.sum(extra) for extra in self.losses]
        return ops.sum(ops.stack(losses)) if len(losses) > 1 else loss

    # -------------------------------------------------------------- sampling

    def generate(
        self,
        num_images,
        steps=20,
        seed=None,
        labels=None,
        sampler=None,
        batch_size=None,
    ):
        """Generates images by sampling from pure noise.

        Args:
            num_images: how many images to generate.
            steps: number of sampler steps.
            seed: int seed of the initial noise (and of the sampler's noise).
                The same seed gives the same images.
            labels: int labels (num_images,) for class-conditional networks.
            sampler: override the model's default sampler (`"ddim"` or a
                sampler instance).
            batch_size: generate in chunks of this size (default: all at once).

        Returns:
            A numpy array (num_images, *image_shape) in the data's range:
            float32 in [0, 1], or uint8 when the model was trained on uint8.
        """
        if isinstance(num_images, bool) or not isinstance(
            num_images, (int, np.integer)
        ) or num_images < 1:
            raise ValueError(
                f"`num_images` must be an integer >= 1, got {num_images!r}."
            )
        if self.num_classes_input and labels is None:
            raise ValueError(
                "The network is class-conditional: pass `labels` "
                "(num_images,) to generate()."
            )
        if labels is not None and not self.num_classes_input:
            raise ValueError(
                "The network is unconditional: build it with `num_classes` "
                "to generate with `labels`."
            )
        if labels is not None:
            labels = np.asarray(labels).astype("int32").reshape(-1)
            if labels.shape[0] != num_images:
                raise ValueError(
                    f"`labels` must have num_images={num_images} entries, got "
                    f"{labels.shape[0]}."
                )
        sampler = samplers_lib.get(sampler) if sampler else self.sampler
        batch_size = int(batch_size or num_images)
        seed_generator = keras.random.SeedGenerator(seed)
        outputs = []
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            chunk_labels = None
            if labels is not None:
                chunk_labels = ops.convert_to_tensor(labels[start:start + count])
            noise = keras.random.normal(
                (count,) + tuple(self.image_shape), seed=seed_generator
            )
            images = sampler.sample(
                self._denoiser(chunk_labels),
                noise,
                self.schedule,
                steps,
                seed=seed_generator,
            )
            outputs.append(ops.convert_to_numpy(self.denormalize(images)))
        return np.concatenate(outputs, axis=0)

    def _denoiser(self, labels):
        if getattr(self, "_inference_network", None) is None:
            self._inference_network = inference_function(self.network)
        network = self._inference_network

        def denoise(noisy, t):
            prediction = network(self._network_inputs(noisy, t, labels))
            signal_rate, noise_rate = self._rates(t)
            return self.split_prediction(
                prediction, noisy, signal_rate, noise_rate
            )

        return denoise

    # --------------------------------------------------------- serialization

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "schedule": schedules_lib.serialize(self.schedule),
                "assignment": assignment_lib.serialize(self.assigner),
                "prediction": self.prediction,
                "sampler": samplers_lib.serialize(self.sampler),
                "loss_type": self.loss_type,
                "data_dtype": self.data_dtype,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(
            config["network"]
        )
        return cls(**config)
