"""Immiscible Diffusion: linear assignment of a batch of noise to the data."""

import keras
from keras import ops

from keras_immiscible.assignment.noise_assigner import NoiseAssigner
from keras_immiscible.ops.distance import assignment_cost
from keras_immiscible.ops.distance import check_metric
from keras_immiscible.ops.linear_sum_assignment import check_solver
from keras_immiscible.ops.linear_sum_assignment import linear_sum_assignment


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

    Example:

    >>> assigner = LinearAssignment(solver="scipy")
    >>> noise = assigner(images, seed=1)
    >>> noise, change = assigner(images, seed=1, return_change=True)
    """

    def __init__(self, solver="scipy", metric="sq_l2", quantize=False):
        check_solver(solver)
        check_metric(metric)
        if not isinstance(quantize, bool):
            raise TypeError(f"`quantize` must be a bool, got {quantize!r}.")
        self.solver = solver
        self.metric = metric
        self.quantize = quantize

    @property
    def on_host(self):
        """Whether the solver runs on the host (not XLA-compilable on TF)."""
        return self.solver == "scipy"

    def assign(self, data, candidates):
        cost = assignment_cost(
            data, candidates, metric=self.metric, quantize=self.quantize
        )
        columns = linear_sum_assignment(cost, solver=self.solver)
        return ops.take(candidates, columns, axis=0)

    def get_config(self):
        return {
            "solver": self.solver,
            "metric": self.metric,
            "quantize": self.quantize,
        }
