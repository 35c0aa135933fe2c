"""An epsilon-scaling auction solver for the linear assignment problem.

Written only with `keras.ops`, with static shapes and a bounded
`while_loop`, so it compiles with XLA (`jax.jit`, TensorFlow
`jit_compile=True`) and never leaves the device.

The algorithm is Bertsekas' auction in its Jacobi (parallel) form: every
unassigned row ("person") bids, at once, for the column ("object") of
highest net value `benefit - price`, raising that object's price by the gap
between its best and second-best value plus `epsilon`; every object goes to
its highest bidder, evicting the previous owner. When every person holds an
object, the assignment is *epsilon-complementary-slack*: each person is
within `epsilon` of its best net value. Epsilon-scaling runs this for a
decreasing sequence of `epsilon` (prices carried over), which makes the
final, small-`epsilon` phase short.

Optimality guarantee: costs are first rescaled to benefits in [0, 1]
(`(max - cost) / (max - min)`, which does not change the optimal
permutation). If the auction converges at the final `epsilon`, the total cost
of its permutation exceeds the optimum by at most
`n * epsilon * (max(cost) - min(cost))` (Bertsekas, 1988). In practice the
gap is far smaller than this bound. If `max_rounds` is hit first, the persons
still unassigned are matched to the free objects in index order, so the
result is always a permutation, but without the bound.
"""

from keras import ops

_NEG = -1e30


def _size(x):
    """Static size of the first axis when known, else a scalar tensor."""
    n = x.shape[0]
    return int(n) if n is not None else ops.shape(x)[0]


def _initial_state(n, benefit):
    prices = ops.zeros((n,), benefit.dtype)
    person_to_object = -ops.ones((n,), "int32")
    object_to_person = -ops.ones((n,), "int32")
    return prices, person_to_object, object_to_person


def _bidding_round(benefit, prices, person_to_object, object_to_person, eps):
    """One Jacobi round: all unassigned persons bid, objects pick winners."""
    n = _size(benefit)
    persons = ops.arange(n, dtype="int32")
    unassigned = person_to_object < 0

    values = benefit - prices[None, :]
    # Best and second-best value per row (two reductions: much faster than
    # `top_k` on XLA:CPU and as fast on GPU).
    best_object = ops.cast(ops.argmax(values, axis=1), "int32")
    best_value = ops.max(values, axis=1)
    is_best = ops.arange(n, dtype="int32")[None, :] == best_object[:, None]
    second_value = ops.max(ops.where(is_best, _NEG, values), axis=1)
    increment = best_value - second_value + eps
    bid = ops.take(prices, best_object) + increment

    # Assigned persons do not bid: send them to a dummy object `n`.
    target = ops.where(unassigned, best_object, n)
    bid = ops.where(unassigned, bid, _NEG)
    best_bid = ops.segment_max(bid, target, num_segments=n + 1)[:n]
    # Empty segments come back as -inf or the dtype's lowest value depending
    # on the backend; a real bid always exceeds the current price.
    has_bid = best_bid > prices
    best_bid_of_target = ops.take(
        ops.concatenate([best_bid, ops.full((1,), _NEG, bid.dtype)]), target
    )
    is_winner = ops.logical_and(unassigned, bid >= best_bid_of_target)
    winner = ops.segment_max(
        ops.where(is_winner, persons, -1), target, num_segments=n + 1
    )[:n]
    winner = ops.cast(winner, "int32")

    new_prices = ops.where(has_bid, best_bid, prices)
    new_object_to_person = ops.where(has_bid, winner, object_to_person)

    # Evict the previous owners of the objects that changed hands, then seat
    # the winners. Writes meant for nobody go to the dummy slot `n`.
    objects = ops.arange(n, dtype="int32")
    evicted = ops.where(
        ops.logical_and(has_bid, object_to_person >= 0), object_to_person, n
    )
    padded = ops.concatenate([person_to_object, -ops.ones((1,), "int32")])
    padded = ops.scatter_update(
        padded, evicted[:, None], -ops.ones((n,), "int32")
    )
    seated = ops.where(has_bid, new_object_to_person, n)
    padded = ops.scatter_update(padded, seated[:, None], objects)
    return new_prices, padded[:n], new_object_to_person


def _complete(person_to_object, object_to_person):
    """Matches unassigned persons to free objects, both in index order."""
    n = _size(person_to_object)
    free_person = person_to_object < 0
    free_object = object_to_person < 0
    person_rank = ops.cumsum(ops.cast(free_person, "int32")) - 1
    object_rank = ops.cumsum(ops.cast(free_object, "int32")) - 1
    slot = ops.where(free_object, object_rank, n)
    by_rank = ops.scatter_update(
        ops.zeros((n + 1,), "int32"),
        slot[:, None],
        ops.arange(n, dtype="int32"),
    )
    fill = ops.take(by_rank, ops.maximum(person_rank, 0))
    return ops.where(free_person, fill, person_to_object)


def auction_assignment(
    cost, epsilon=None, initial_epsilon=0.25, scaling=5.0, max_rounds=None
):
    """Minimum-cost permutation of a square cost matrix by auction.

    Args:
        cost: finite float tensor of shape (n, n). `n` may be dynamic
            (e.g. an unknown batch size in a TensorFlow graph).
        epsilon: final epsilon, relative to the cost's range. Defaults to
            `1 / (64 * n)`, which bounds the total cost gap by 1/64 of the
            cost range (usually the realised gap is orders smaller).
        initial_epsilon: first epsilon of the scaling sequence.
        scaling: factor by which epsilon shrinks between phases.
        max_rounds: bound on bidding rounds over all phases. Defaults to
            `max(2000, 40 * n)`.

    Returns:
        int32 tensor of shape (n,): the column assigned to every row. Always
        a permutation.
    """
    n = _size(cost)
    static = isinstance(n, int)
    if static and n == 1:
        return ops.zeros((1,), "int32")
    if epsilon is None:
        epsilon = 1.0 / (64.0 * ops.cast(n, "float32"))
    if max_rounds is None:
        max_rounds = max(2000, 40 * n) if static else ops.maximum(2000, 40 * n)
    epsilon = ops.cast(epsilon, "float32")
    initial_epsilon = ops.maximum(
        ops.cast(initial_epsilon, "float32"), epsilon
    )

    cost = ops.cast(cost, "float32")
    low = ops.min(cost)
    span = ops.maximum(ops.max(cost) - low, 1e-30)
    benefit = (ops.max(cost) - cost) / span

    prices, person_to_object, object_to_person = _initial_state(n, benefit)
    eps = initial_epsilon
    rounds = ops.convert_to_tensor(0, "int32")
    final_eps = epsilon * (1.0 + 1e-4)

    def all_assigned(person_to_object):
        return ops.all(person_to_object >= 0)

    def cond(prices, person_to_object, object_to_person, eps, rounds):
        done = ops.logical_and(all_assigned(person_to_object), eps <= final_eps)
        return ops.logical_and(ops.logical_not(done), rounds < max_rounds)

    def body(prices, person_to_object, object_to_person, eps, rounds):
        # A finished phase (everyone seated) starts the next, smaller one.
        next_phase = all_assigned(person_to_object)
        eps = ops.where(next_phase, ops.maximum(eps / scaling, epsilon), eps)
        person_to_object = ops.where(
            next_phase, ops.full_like(person_to_object, -1), person_to_object
        )
        object_to_person = ops.where(
            next_phase, ops.full_like(object_to_person, -1), object_to_person
        )
        prices, person_to_object, object_to_person = _bidding_round(
            benefit, prices, person_to_object, object_to_person, eps
        )
        return prices, person_to_object, object_to_person, eps, rounds + 1

    state = ops.while_loop(
        cond,
        body,
        (prices, person_to_object, object_to_person, eps, rounds),
        maximum_iterations=max_rounds if static else None,
    )
    _, person_to_object, object_to_person, _, _ = state
    return _complete(person_to_object, object_to_person)
