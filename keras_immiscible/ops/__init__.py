"""Backend-agnostic tensor ops of Immiscible Diffusion.

- `pairwise_distance(x, y, metric="sq_l2")`: (B, M) distances of flattened rows.
- `linear_sum_assignment(cost, solver="scipy")`: the optimal permutation.
- `knn_select(x, candidates)`: the nearest of k candidates per row.
"""

from keras_immiscible.ops.auction import auction_assignment
from keras_immiscible.ops.distance import pairwise_distance
from keras_immiscible.ops.knn import knn_select
from keras_immiscible.ops.linear_sum_assignment import linear_sum_assignment
