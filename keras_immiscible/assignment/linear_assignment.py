"""Immiscible Diffusion: linear assignment of a batch of noise to the data."""

import keras
from keras import ops

from keras_immiscible.assignment.noise_assigner import NoiseAssigner
from keras_immiscible.backend import distribution
from keras_immiscible.ops.distance import assignment_cost
from keras_immiscible.ops.distance import check_metric
from keras_immiscible.ops.linear_sum_assignment import check_solver
from keras_immiscible.ops.linear_sum_assignment import linear_sum_assignment
from keras_immiscible.utils.arguments import check_bool
from keras_immiscible.utils.arguments import check_choice

SCOPES = ("global", "replica")


@keras.saving.register_keras_serializable(package="keras_immiscible")
class LinearAssignment(NoiseAssigner):
    """Pairs a batch of B noises with B samples by minimum total distance.

    Immiscible Diffusion (Li et al., 2024): draw B Gaussian noises, build the
    B x B data-noise cost and solve the linear assignment problem, then give
    every sample its assigned noise. The returned noise is a permutation of
    an i.i.d. Gaussian draw, so its marginal distribution is unchanged.

    Args:
        solver: `"scipy"` (exact, on the host) or `"auction"` (on-device,
            XLA-compilable, near-exact). See
            `keras_immiscible.ops.linear_sum_assignment`.
        metric: `"sq_l2"` (squared L2, solved in its cheap `-2 x.y^T` form;
            same optimum as the full squared distance) or `"l2"` (the
            paper's plain L2).
            The two metrics can have different optima.
        quantize: compute the cost in float16, as the paper's recipe does,
            with inputs scaled so that nothing overflows.
        per_class: assign within each class of the batch (needs `labels`
            when called; models pass their batch's labels). Noise drawn for
            a sample of class c goes to a sample of class c, so every
            class's noise stays a permutation of its own i.i.d. draws and
            keeps its N(0, I) prior; a global assignment pairs images with
            noise across classes and skews each class's noise towards its
            images (arXiv 2503.10636). One B x B solve in which pairs across
            classes cost more than any within-class permutation: the same
            optimum as one solve per class. Default False (the papers'
            recipe, which assigns across labels).
        scope: what one assignment covers when training runs on several
            devices (`keras.distribution` on JAX, `tf.distribute` on
            TensorFlow). `"global"` (default): one assignment over the
            whole global batch, as the official code does (it all-gathers
            the noise and the distance rows so that one process solves the
            8 x 256 batch of its Stable Diffusion runs); on JAX the step
            already sees the global batch, on TensorFlow the replicas'
            rows are all-gathered, every replica solves the same problem
            and keeps its slice. `"replica"`: each device assigns its own
            shard, with no communication (`jax.shard_map` on JAX; the
            per-replica step on TensorFlow). The default is the papers'
            recipe, and it is the one whose result does not depend on the
            device count (4 devices give the noise of 1 device with the
            same global batch and seed). `"replica"` is recommended once
            the per-device batch is large (hundreds of rows): the solve is
            superlinear in B (scipy ~B^3), the shards' solves run in
            parallel, and the papers' gain grows only slowly with B
            (1.93% at B=128, 2.44% at B=1024, Immiscible Diffusion
            Table 2). On one device both scopes are the same. In both
            scopes the candidate noise is the same draw: the one-device
            draw of the global batch, of which each device holds its rows.

    Example:

    >>> assigner = LinearAssignment(solver="scipy")
    >>> noise = assigner(images, seed=1)
    >>> noise, gain = assigner(images, seed=1, return_gain=True)
    >>> per_class = LinearAssignment(per_class=True)
    >>> noise = per_class(images, seed=1, labels=labels)
    >>> sharded = LinearAssignment(solver="auction", scope="replica")
    """

    def __init__(
        self,
        solver="scipy",
        metric="sq_l2",
        quantize=False,
        per_class=False,
        scope="global",
    ):
        check_solver(solver)
        check_metric(metric)
        quantize = check_bool(quantize, "quantize")
        per_class = check_bool(per_class, "per_class")
        check_choice(scope, "scope", SCOPES)
        self.solver = solver
        self.metric = metric
        self.quantize = quantize
        self.per_class = per_class
        self.scope = scope

    @property
    def on_host(self):
        """Whether the solver runs on the host (not XLA-compilable on TF)."""
        return self.solver == "scipy"

    def draw(self, data, seed=None):
        """This device's rows of the global batch's Gaussian draw.

        On one device (and on JAX, whose step sees the global batch) the
        draw of `data`'s shape; on a TensorFlow replica, its rows of the
        draw for the global batch (see `backend.distribution.draw_rows`).
        """
        return distribution.draw_rows(
            lambda shape: keras.random.normal(shape, dtype=data.dtype, seed=seed),
            data,
        )

    def assign(self, data, candidates, labels=None):
        if self.scope == "replica":
            return distribution.over_replicas(self._assign, data, candidates, labels)
        return distribution.over_global_batch(self._assign, data, candidates, labels)

    def _assign(self, data, candidates, labels=None):
        cost = assignment_cost(
            data, candidates, metric=self.metric, quantize=self.quantize
        )
        if self.per_class:
            cost = self._within_classes(cost, labels)
        columns = linear_sum_assignment(cost, solver=self.solver)
        return ops.take(candidates, columns, axis=0)

    @staticmethod
    def _within_classes(cost, labels):
        """`cost` with pairs across classes priced out of every optimum.

        Candidate j was drawn for sample j, so it belongs to class
        `labels[j]`. Adding `B (max - min + 1)` to the pairs whose classes
        differ makes any permutation that uses one cost more than every
        within-class permutation (one exists: the identity), so the optimum
        is the per-class optimum.
        """
        if labels is None:
            raise ValueError(
                "LinearAssignment(per_class=True) assigns within classes: "
                "call it with `labels` (B,)."
            )
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        if (
            labels.shape[0] is not None
            and cost.shape[0] is not None
            and (labels.shape[0] != cost.shape[0])
        ):
            raise ValueError(
                f"`labels` must have one entry per sample ({cost.shape[0]}), "
                f"got {labels.shape[0]}."
            )
        across = ops.not_equal(labels[:, None], labels[None, :])
        size = ops.cast(ops.shape(cost)[0], cost.dtype)
        penalty = size * (ops.max(cost) - ops.min(cost) + 1.0)
        return ops.where(across, cost + penalty, cost)

    def get_config(self):
        return {
            "solver": self.solver,
            "metric": self.metric,
            "quantize": self.quantize,
            "per_class": self.per_class,
            "scope": self.scope,
        }
