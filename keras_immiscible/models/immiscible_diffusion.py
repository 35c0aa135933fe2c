"""`ImmiscibleDiffusion`: a diffusion model trained with assigned noise."""

import keras
from keras import ops

from keras_immiscible import schedules as schedules_lib
from keras_immiscible.backend import distribution
from keras_immiscible.models import predictions
from keras_immiscible.models.immiscible_model import ImmiscibleModel

PREDICTIONS = predictions.PREDICTIONS


@keras.saving.register_keras_serializable(package="keras_immiscible")
class ImmiscibleDiffusion(ImmiscibleModel):
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
    `model(x)` and `predict` raise a `TypeError`: use `generate` to sample.

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
            `"v"` (`signal * noise - noise_rate * data`), `"x0"` (the data)
            or `"velocity"` (`noise - data`, the flow-matching target); see
            `keras_immiscible.models.predictions`.
        sampler: default sampler of `generate`, e.g. `"ddim"`, `"ddpm"` or
            `keras_immiscible.samplers.DDIM(eta=1.0)`.
        loss_type: `"mse"` or `"mae"` between prediction and target.
        data_dtype: `"float32"` (images in [0, 1]) or `"uint8"`; `None`
            takes it from the first training batch.
        seed: int seed of the model's `SeedGenerator` (noise, times).
        clip_denoised: while sampling with a denoising sampler (DDIM,
            DDPM), clip the predicted data to the data range [-1, 1] and
            recompute the predicted noise from it, as DDPM implementations
            do. At the noisiest times of DDPM schedules (signal rate 5e-5 at
            `t = 1` for `IDDPMCosine`) an epsilon prediction's error is
            amplified ~10^4x in the predicted data; clipping keeps it in range.
            Velocity samplers (Euler, Heun) are not affected.

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
        clip_denoised=True,
        **kwargs,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}."
            )
        super().__init__(
            network,
            assignment=assignment,
            sampler=sampler,
            loss_type=loss_type,
            data_dtype=data_dtype,
            seed=seed,
            **kwargs,
        )
        self.schedule = schedules_lib.get(schedule)
        self.prediction = prediction
        self.clip_denoised = bool(clip_denoised)

    # ------------------------------------------------------- diffusion math

    def _rates(self, t):
        signal_rate, noise_rate = self.schedule(t)
        return self._per_sample(signal_rate), self._per_sample(noise_rate)

    def sample_times(self, batch_size):
        """Draws the training times of a batch (the schedule's sampling)."""
        return self.schedule.sample_times(batch_size, seed=self.seed_generator)

    def split_prediction(self, prediction, noisy, signal_rate, noise_rate):
        """Converts the network output into `(pred_noise, pred_data)`."""
        return predictions.split(
            self.prediction, prediction, noisy, signal_rate, noise_rate
        )

    def training_target(self, data, noise, signal_rate, noise_rate):
        """The regression target of the network for `self.prediction`."""
        return predictions.target(self.prediction, data, noise, signal_rate, noise_rate)

    def noise_loss(self, data, noise, labels=None, training=True):
        """Diffusion loss of `data` in [-1, 1] noised with `noise`."""
        t = distribution.draw_batch_rows(self.sample_times, ops.shape(data)[0])
        signal_rate, noise_rate = self._rates(t)
        noisy = signal_rate * data + noise_rate * noise
        output = self.network(
            self._network_inputs(noisy, self.schedule.conditioning(t), labels),
            training=training,
        )
        target = self.training_target(data, noise, signal_rate, noise_rate)
        return self._reduce(ops.cast(output, "float32") - target)

    # -------------------------------------------------------------- sampling

    def sample(self, noise, steps, sampler, seed, labels=None):
        network = self._inference_network()

        def predict(noisy, t):
            output = network(
                self._network_inputs(noisy, self.schedule.conditioning(t), labels)
            )
            signal_rate, noise_rate = self._rates(t)
            return self.split_prediction(output, noisy, signal_rate, noise_rate)

        def denoise(noisy, t):
            pred_noise, pred_data = predict(noisy, t)
            if self.clip_denoised:
                signal_rate, noise_rate = self._rates(t)
                pred_data = ops.clip(pred_data, -1.0, 1.0)
                pred_noise = (noisy - signal_rate * pred_data) / noise_rate
            return pred_noise, pred_data

        if getattr(sampler, "kind", "denoise") == "velocity":
            if not isinstance(self.schedule, schedules_lib.LinearInterpolation):
                raise ValueError(
                    f"{sampler!r} integrates the flow of the linear path "
                    "x_t = (1 - t) x0 + t eps; this model's schedule is "
                    f"{self.schedule!r}. Use a denoising sampler such as "
                    "'ddim' or 'ddpm'."
                )

            def velocity(noisy, t):
                pred_noise, pred_data = predict(noisy, t)
                return pred_noise - pred_data

            return sampler.sample(velocity, noise, self.schedule, steps, seed)
        return sampler.sample(denoise, noise, self.schedule, steps, seed)

    # --------------------------------------------------------- serialization

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "schedule": schedules_lib.serialize(self.schedule),
                "prediction": self.prediction,
                "clip_denoised": self.clip_denoised,
            }
        )
        return config
