"""A Sinkhorn-warm-started auction for the linear assignment problem.

Written only with `keras.ops`, with static shapes and bounded loops, so it
compiles with XLA (`jax.jit`, TensorFlow `jit_compile=True`) and never leaves
the device. On PyTorch it runs eagerly.

The solver, for a square cost matrix `C` (minimise the total cost):

1. Reduction. `C` minus its row minima, then minus its column minima: every
   permutation's total changes by one constant, so the optimum is the same,
   and what is left is the part of the cost that the assignment can change
   (for image-vs-noise costs the full range is dominated by the norms). Every
   temperature and epsilon below is measured in units of the reduced cost's
   standard deviation `s`.
2. Warm start. A fixed number of log-domain Sinkhorn iterations (entropic
   optimal transport) with a temperature decreasing geometrically from
   `s` to `initial_epsilon * s`. The column potentials `g` are a near-optimal
   dual solution; the auction starts from prices `p = -g`, so most rows
   already prefer distinct columns.
3. Auction phases (Bertsekas' auction in its Jacobi form, cost version):
   every unassigned row bids, at once, for the column `j` that minimises
   `C_ij + p_j`, raising `p_j` by the gap to its second-best column plus
   `epsilon`; every column goes to its highest bidder, evicting the
   previous holder. When every row holds a column, the
   assignment is epsilon-complementary-slack.
4. Certificate. For any prices `p`, `D = sum_i min_j (C_ij + p_j) - sum_j p_j`
   is a lower bound of the optimum (weak duality), so for the permutation
   found, with total `P`, and the identity's total `I`,
   `gap_bound = (P - D) / (I - D)` bounds the true relative gap
   `(P - opt) / (I - opt)` from above. Both `P - D` and `I - D` are sums of
   non-negative per-row slacks, computed as such (no cancellation). If
   `gap_bound <= tolerance` the solver stops; otherwise it divides epsilon by
   `scaling`, releases only the rows that violate the new epsilon-slackness,
   and bids again.

Several bidding rounds (and Sinkhorn iterations) run per loop iteration,
since compiled while-loops pay a fixed cost per iteration; once few rows are
left unassigned, a round bids with only those rows (a gathered `(k, n)` slice
instead of the whole matrix). The loop is bounded by `max_rounds`; if that
is hit first, the rows still unassigned take the free columns in index order,
so the result is always a permutation (and `gap_bound`, which holds for any
permutation, still says how good it is).
"""

import math

from keras import ops

_NEG = -1e30
_TINY = 1e-30


def _size(x):
    """Static size of the first axis when known, else a scalar tensor."""
    n = x.shape[0]
    return int(n) if n is not None else ops.shape(x)[0]


def reduce_cost(cost):
    """`cost` minus its row minima, then its column minima (`keras.ops`)."""
    cost = cost - ops.min(cost, axis=1, keepdims=True)
    return cost - ops.min(cost, axis=0, keepdims=True)


# --------------------------------------------------------------- Sinkhorn


def _sinkhorn_prices(cost, iterations, final_temperature, unroll):
    """Prices `-g` from `iterations` annealed log-domain Sinkhorn steps.

    `cost` is reduced and scaled to unit spread. The temperature goes from 1
    to `final_temperature` geometrically over the iterations; each iteration
    updates the row potentials `f`, then the column potentials `g`, so that
    `f_i + g_j - C_ij` are the log-weights of a near doubly stochastic plan.
    """
    n = _size(cost)
    g = ops.zeros((n,), cost.dtype)
    if iterations <= 0:
        return -g
    ratio = final_temperature ** (1.0 / max(iterations - 1, 1))

    def step(k, g):
        temperature = ops.power(ops.cast(ratio, "float32"), ops.cast(k, "float32"))
        f = -temperature * ops.logsumexp((g[None, :] - cost) / temperature, axis=1)
        return -temperature * ops.logsumexp((f[:, None] - cost) / temperature, axis=0)

    loops, rest = divmod(iterations, unroll)

    def body(i, g):
        for u in range(unroll):
            g = step(i * unroll + u, g)
        return g

    if loops:
        g = ops.fori_loop(0, loops, body, g)
    for u in range(rest):
        g = step(loops * unroll + u, g)
    return -g


def warm_start_prices(cost, iterations=8, final_temperature=0.03, unroll=4):
    """Column prices `p` for `cost` from a short annealed Sinkhorn run.

    `cost + p[None, :]` has the same optimal permutations as `cost` (every
    permutation's total changes by `sum(p)`), but after its row minima are
    subtracted most rows already have their optimal column at (or near) the
    minimum. An exact solver that starts from zero duals, such as scipy's,
    then has short augmenting paths: at B = 1024 on image- and digits-vs-noise
    costs, 8 iterations cut scipy's solve 2.5-6.0x (`benchmarks/
    assignment_speed.py --study host`). Written in `keras.ops`, so it runs
    on the device.

    Args:
        cost: finite float tensor (n, n).
        iterations: Sinkhorn iterations (each updates the row, then the
            column potentials); 0 returns zero prices.
        final_temperature: the last temperature, in units of the reduced
            cost's standard deviation (the first is 1).
        unroll: iterations per loop iteration.

    Returns:
        float32 tensor (n,).
    """
    cost = ops.cast(cost, "float32")
    rows_reduced = cost - ops.min(cost, axis=1, keepdims=True)
    column_minima = ops.min(rows_reduced, axis=0)
    reduced = rows_reduced - column_minima[None, :]
    scale = ops.maximum(ops.std(reduced), _TINY)
    prices = _sinkhorn_prices(reduced / scale, iterations, final_temperature, unroll)
    # Prices for `reduced` are prices for `cost` minus its column minima.
    return prices * scale - column_minima


# ---------------------------------------------------------------- auction


def _best_two(values):
    """Row-wise argmax and the best and second-best values of `values`."""
    m = values.shape[1] if values.shape[1] is not None else ops.shape(values)[1]
    best_object = ops.cast(ops.argmax(values, axis=1), "int32")
    best_value = ops.max(values, axis=1)
    is_best = ops.arange(m, dtype="int32")[None, :] == best_object[:, None]
    second_value = ops.max(ops.where(is_best, _NEG, values), axis=1)
    return best_object, best_value, second_value


def _bid(values, bidders, bidding, prices, person_to_object, object_to_person, eps):
    """One Jacobi round for the rows `bidders` (those with `bidding` true).

    `values[r]` is `-(C + p)` for row `bidders[r]`. Every bidding row bids
    for its best column; every column with a bid goes to its highest bidder
    (ties: the higher row index), whose previous holder is evicted.
    """
    n = _size(prices)
    best_object, best_value, second_value = _best_two(values)
    # A single column has no second best: bid just epsilon above the price.
    second_value = ops.maximum(second_value, best_value - 1.0)
    bid = ops.take(prices, best_object) + (best_value - second_value) + eps
    target = ops.where(bidding, best_object, n)
    bid = ops.where(bidding, bid, _NEG)
    best_bid = ops.segment_max(bid, target, num_segments=n + 1)[:n]
    has_bid = best_bid > _NEG / 2
    best_bid_of_target = ops.take(
        ops.concatenate([best_bid, ops.full((1,), _NEG, bid.dtype)]), target
    )
    is_winner = ops.logical_and(bidding, bid >= best_bid_of_target)
    winner = ops.segment_max(
        ops.where(is_winner, bidders, -1), target, num_segments=n + 1
    )[:n]
    winner = ops.cast(winner, "int32")

    new_prices = ops.where(has_bid, best_bid, prices)
    new_object_to_person = ops.where(has_bid, winner, object_to_person)
    objects = ops.arange(n, dtype="int32")
    evicted = ops.where(
        ops.logical_and(has_bid, object_to_person >= 0), object_to_person, n
    )
    padded = ops.concatenate([person_to_object, -ops.ones((1,), "int32")])
    padded = ops.scatter_update(padded, evicted[:, None], -ops.ones((n,), "int32"))
    seated = ops.where(has_bid, new_object_to_person, n)
    padded = ops.scatter_update(padded, seated[:, None], objects)
    return new_prices, padded[:n], new_object_to_person


def _full_round(cost, prices, person_to_object, object_to_person, eps, active):
    n = _size(cost)
    bidding = ops.logical_and(person_to_object < 0, active)
    values = -(cost + prices[None, :])
    return _bid(
        values,
        ops.arange(n, dtype="int32"),
        bidding,
        prices,
        person_to_object,
        object_to_person,
        eps,
    )


def _tail_round(cost, prices, person_to_object, object_to_person, eps, active, k):
    """A round in which only (at most `k`) unassigned rows bid."""
    unassigned = person_to_object < 0
    _, bidders = ops.top_k(ops.cast(unassigned, "float32"), k, sorted=False)
    bidders = ops.cast(bidders, "int32")
    bidding = ops.logical_and(ops.take(unassigned, bidders), active)
    values = -(ops.take(cost, bidders, axis=0) + prices[None, :])
    return _bid(
        values, bidders, bidding, prices, person_to_object, object_to_person, eps
    )


def _slacks(cost, prices, columns):
    """`(P - D, I - D)` for the duals of `prices`, as sums of row slacks.

    The row duals are `u_i = min_j (C_ij + p_j)`, the column duals their
    c-transform `v_j = min_i (C_ij - u_i)` (at least `-p_j`, so the bound
    `D = sum u + sum v` is at least the one of the prices themselves). Both
    are feasible (`u_i + v_j <= C_ij`), so every row's slack
    `C_i,col(i) - u_i - v_col(i)` is >= 0, and `D <= opt` (weak duality).
    """
    n = _size(cost)
    u = ops.min(cost + prices[None, :], axis=1)
    v = ops.min(cost - u[:, None], axis=0)
    rows = ops.arange(n, dtype="int32")
    chosen = ops.take_along_axis(cost, columns[:, None], axis=1)[:, 0]
    diagonal = ops.take_along_axis(cost, rows[:, None], axis=1)[:, 0]
    primal = chosen - u - ops.take(v, columns)
    identity = diagonal - u - v
    return (ops.sum(ops.maximum(primal, 0.0)), ops.sum(ops.maximum(identity, 0.0)))


def _bound(cost, prices, columns):
    """The certified relative gap of `columns`; 0 if the identity is optimal."""
    primal_slack, identity_slack = _slacks(cost, prices, columns)
    bound = ops.where(
        identity_slack > 0.0,
        primal_slack / ops.maximum(identity_slack, _TINY),
        ops.where(primal_slack > 0.0, float("inf"), 0.0),
    )
    # Overflowed prices certify nothing.
    return ops.where(ops.isnan(bound), float("inf"), bound)


def _augment_one(cost, prices, person_to_object, object_to_person, max_steps, unroll):
    """Seats one unassigned row along a shortest augmenting path.

    Dijkstra on the reduced costs `C_ij + p_j` (dense, one column per step:
    `O(n)` work a step, not `O(n^2)` like a bidding round), as in the
    augmentation phase of Jonker and Volgenant's algorithm: columns are
    scanned in order of distance from the free row until a free column is
    reached; the prices of the scanned columns then rise so that the path's
    edges stay (near) tight, and the path is flipped. Returns the new state
    and the number of steps.
    """
    n = _size(cost)
    big = ops.convert_to_tensor(float("inf"), cost.dtype)
    start = ops.cast(ops.argmax(ops.cast(person_to_object < 0, "int32")), "int32")
    row = ops.take(cost, start, axis=0) + prices
    dist = row - ops.min(row)
    pred = ops.full((n,), start, "int32")
    scanned = ops.zeros((n,), "bool")
    objects = ops.arange(n, dtype="int32")

    def cond(dist, pred, scanned, found, last, mu, steps):
        return ops.logical_and(found < 0, steps < max_steps)

    def body(*state):
        for _ in range(unroll):
            state = step(*state)
        return state

    def step(dist, pred, scanned, found, last, mu, steps):
        # A no-op once the free column is found (unrolled steps).
        going = ops.logical_and(found < 0, steps < max_steps)
        mu_before = mu
        open_dist = ops.where(scanned, big, dist)
        j = ops.cast(ops.argmin(open_dist), "int32")
        mu = ops.take(open_dist, j)
        owner = ops.take(object_to_person, j)
        free = owner < 0
        scanned = ops.logical_or(scanned, ops.logical_and(objects == j, going))
        i = ops.maximum(owner, 0)
        row = ops.take(cost, i, axis=0) + prices
        through = mu + row - ops.take(row, j)
        better = ops.logical_and(ops.logical_not(scanned), through < dist)
        better = ops.logical_and(better, ops.logical_and(ops.logical_not(free), going))
        dist = ops.where(better, through, dist)
        pred = ops.where(better, i, pred)
        found = ops.where(ops.logical_and(free, going), j, found)
        mu = ops.where(going, mu, mu_before)
        return dist, pred, scanned, found, j, mu, steps + ops.cast(going, "int32")

    state = ops.while_loop(
        cond,
        body,
        (
            dist,
            pred,
            scanned,
            ops.convert_to_tensor(-1, "int32"),
            ops.convert_to_tensor(0, "int32"),
            ops.convert_to_tensor(0.0, cost.dtype),
            ops.convert_to_tensor(0, "int32"),
        ),
    )
    dist, pred, scanned, found, _, mu, steps = state
    ok = found >= 0
    # Scanned columns (all at distance <= mu) rise by mu - d: the columns
    # on the path become as cheap as the free column for their new rows.
    raise_by = ops.where(ops.logical_and(scanned, ok), ops.maximum(mu - dist, 0.0), 0.0)
    prices = prices + raise_by

    def flip_cond(j, person_to_object, object_to_person, going):
        return going

    def flip_body(j, person_to_object, object_to_person, going):
        i = ops.take(pred, j)
        previous = ops.take(person_to_object, i)
        person_to_object = ops.where(objects == i, j, person_to_object)
        object_to_person = ops.where(objects == j, i, object_to_person)
        return previous, person_to_object, object_to_person, i != start

    _, person_to_object, object_to_person, _ = ops.while_loop(
        flip_cond,
        flip_body,
        (ops.maximum(found, 0), person_to_object, object_to_person, ok),
        maximum_iterations=n,
    )
    return prices, person_to_object, object_to_person, steps


def _augment(cost, prices, person_to_object, object_to_person, max_steps, unroll):
    """Seats every unassigned row by augmenting paths (see `_augment_one`)."""

    def cond(prices, person_to_object, object_to_person, steps):
        return ops.logical_and(ops.any(person_to_object < 0), steps < max_steps)

    def body(prices, person_to_object, object_to_person, steps):
        prices, person_to_object, object_to_person, used = _augment_one(
            cost,
            prices,
            person_to_object,
            object_to_person,
            max_steps - steps,
            unroll,
        )
        return prices, person_to_object, object_to_person, steps + used

    return ops.while_loop(
        cond,
        body,
        (prices, person_to_object, object_to_person, ops.convert_to_tensor(0, "int32")),
    )


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
    cost,
    tolerance=1e-3,
    sinkhorn_iterations=64,
    initial_epsilon=5e-3,
    epsilon=1e-6,
    scaling=4.0,
    max_rounds=None,
    unroll=4,
    tail_size=64,
    tail_rows=None,
    return_info=False,
):
    """Minimum-cost permutation of a square cost matrix by auction.

    Args:
        cost: finite float tensor of shape (n, n). `n` may be dynamic
            (e.g. an unknown batch size in a TensorFlow graph).
        tolerance: stop as soon as the certified relative gap
            `(P - D) / (I - D)` (see the module docstring) is at most this:
            the permutation then misses at most this fraction of the
            reduction of the total cost that the optimum achieves over the
            identity. 0 asks for a certified optimum (down to `epsilon`).
        sinkhorn_iterations: annealed Sinkhorn iterations of the warm start
            (0: start the auction from zero prices).
        initial_epsilon: the last Sinkhorn temperature and the first auction
            epsilon, in units of the reduced cost's standard deviation.
        epsilon: the smallest epsilon (same units): when a phase at this
            epsilon ends without meeting `tolerance`, the solver stops
            (`converged` false).
        scaling: factor by which epsilon shrinks between phases.
        max_rounds: bound on bidding rounds over all phases. Defaults to
            `max(1000, 4 * n)`.
        unroll: bidding rounds (and Sinkhorn iterations) per loop iteration.
        tail_size: once at most this many rows are unassigned, rounds bid
            with a `(tail_size, n)` slice of the cost (static `n` only).
        return_info: also return a dict of scalar tensors: `rounds` (bidding
            rounds run), `sinkhorn_iterations`, `gap_bound` (the certified
            bound above, for the permutation returned) and `converged`
            (whether `gap_bound <= tolerance`).

    Returns:
        int32 tensor of shape (n,): the column assigned to every row, always
        a permutation; with `return_info`, the pair `(columns, info)`.
    """
    n = _size(cost)
    static = isinstance(n, int)
    unroll = max(int(unroll), 1)
    sinkhorn_iterations = max(int(sinkhorn_iterations), 0)
    if static and n == 1:
        columns = ops.zeros((1,), "int32")
        if not return_info:
            return columns
        return columns, {
            "rounds": ops.convert_to_tensor(0, "int32"),
            "sinkhorn_iterations": ops.convert_to_tensor(0, "int32"),
            "gap_bound": ops.convert_to_tensor(0.0, "float32"),
            "converged": ops.convert_to_tensor(True),
        }
    if max_rounds is None:
        max_rounds = max(1000, 4 * n) if static else ops.maximum(1000, 4 * n)

    cost = reduce_cost(ops.cast(cost, "float32"))
    scale = ops.maximum(ops.std(cost), _TINY)
    cost = cost / scale
    prices = _sinkhorn_prices(cost, sinkhorn_iterations, float(initial_epsilon), unroll)
    prices = prices - ops.min(prices)

    tolerance = ops.cast(tolerance, "float32")
    min_eps = ops.cast(epsilon, "float32")
    eps = ops.maximum(ops.cast(initial_epsilon, "float32"), min_eps)
    person_to_object = -ops.ones((n,), "int32")
    object_to_person = -ops.ones((n,), "int32")
    rounds = ops.convert_to_tensor(0, "int32")
    # A cost on which the identity is already optimal (e.g. a constant one)
    # is certified before any bidding: I - D = 0.
    identity = ops.arange(n, dtype="int32")
    done = _bound(cost, prices, identity) <= 0.0
    bound = ops.convert_to_tensor(1.0, "float32")
    use_tail = static and tail_size and 0 < tail_size < n
    if tail_rows is None:
        tail_rows = max(1, n // 64) if static else ops.maximum(1, n // 64)
    tail_steps = ops.convert_to_tensor(0, "int32")
    max_tail_steps = n * 4 * tail_rows

    def one_round(
        prices, person_to_object, object_to_person, eps, rounds, done, phase_rounds
    ):
        unassigned = ops.sum(ops.cast(person_to_object < 0, "int32"))
        active = ops.logical_and(
            ops.logical_and(unassigned > tail_rows, rounds < max_rounds),
            ops.logical_not(done),
        )
        state = (prices, person_to_object, object_to_person)
        if use_tail:
            state = ops.cond(
                unassigned <= tail_size,
                lambda: _tail_round(cost, *state, eps, active, tail_size),
                lambda: _full_round(cost, *state, eps, active),
            )
        else:
            state = _full_round(cost, *state, eps, active)
        step = ops.cast(active, "int32")
        return state + (rounds + step, phase_rounds + step)

    def cond(
        prices,
        person_to_object,
        object_to_person,
        eps,
        rounds,
        done,
        bound,
        phase_rounds,
        tail_steps,
    ):
        return ops.logical_and(ops.logical_not(done), rounds < max_rounds)

    def body(
        prices,
        person_to_object,
        object_to_person,
        eps,
        rounds,
        done,
        bound,
        phase_rounds,
        tail_steps,
    ):
        for _ in range(unroll):
            prices, person_to_object, object_to_person, rounds, phase_rounds = (
                one_round(
                    prices,
                    person_to_object,
                    object_to_person,
                    eps,
                    rounds,
                    done,
                    phase_rounds,
                )
            )
        # The last few rows: shortest augmenting paths, O(n) per step.
        unassigned = ops.sum(ops.cast(person_to_object < 0, "int32"))
        need = ops.logical_and(
            ops.logical_and(unassigned > 0, unassigned <= tail_rows),
            ops.logical_and(ops.logical_not(done), tail_steps < max_tail_steps),
        )
        prices, person_to_object, object_to_person, used = ops.cond(
            need,
            lambda: _augment(
                cost,
                prices,
                person_to_object,
                object_to_person,
                max_tail_steps - tail_steps,
                unroll,
            ),
            lambda: (
                prices,
                person_to_object,
                object_to_person,
                ops.convert_to_tensor(0, "int32"),
            ),
        )
        tail_steps = tail_steps + used
        # A phase has ended when every row holds a column: certify it, or
        # start the next one with a smaller epsilon, releasing only the rows
        # that are not within the new epsilon of their best column.
        complete = ops.all(person_to_object >= 0)
        columns = ops.maximum(person_to_object, 0)
        phase_bound = _bound(cost, prices, columns)
        certified = ops.logical_and(complete, phase_bound <= tolerance)
        last_phase = ops.logical_and(complete, eps <= min_eps * (1 + 1e-4))
        done = ops.logical_or(certified, last_phase)
        bound = ops.where(complete, phase_bound, bound)
        next_phase = ops.logical_and(complete, ops.logical_not(done))
        new_eps = ops.maximum(eps / scaling, min_eps)
        reduced = cost + prices[None, :]
        held = ops.take_along_axis(reduced, columns[:, None], axis=1)[:, 0]
        violates = held > ops.min(reduced, axis=1) + new_eps
        release = ops.logical_and(next_phase, violates)
        freed = ops.where(release, person_to_object, n)
        padded = ops.concatenate([object_to_person, -ops.ones((1,), "int32")])
        padded = ops.scatter_update(padded, freed[:, None], -ops.ones((n,), "int32"))
        object_to_person = padded[:n]
        person_to_object = ops.where(release, -1, person_to_object)
        eps = ops.where(next_phase, new_eps, eps)
        phase_rounds = ops.where(next_phase, 0, phase_rounds)
        # Out of tail steps with rows still unassigned: stop (filled below).
        stuck = ops.logical_and(
            ops.logical_not(complete),
            ops.logical_and(unassigned <= tail_rows, tail_steps >= max_tail_steps),
        )
        done = ops.logical_or(done, stuck)
        return (
            prices,
            person_to_object,
            object_to_person,
            eps,
            rounds,
            done,
            bound,
            phase_rounds,
            tail_steps,
        )

    loop_bound = None
    if static:
        loop_bound = int(math.ceil(max_rounds / unroll)) + 2 * int(
            math.ceil(
                math.log(max(initial_epsilon / epsilon, 1.0))
                / math.log(max(scaling, 1.0 + 1e-6))
                + 1
            )
        )
    state = ops.while_loop(
        cond,
        body,
        (
            prices,
            person_to_object,
            object_to_person,
            eps,
            rounds,
            done,
            bound,
            rounds,
            tail_steps,
        ),
        maximum_iterations=loop_bound,
    )
    (
        prices,
        person_to_object,
        object_to_person,
        _,
        rounds,
        done,
        bound,
        _,
        tail_steps,
    ) = state
    columns = _complete(person_to_object, object_to_person)
    if not return_info:
        return columns
    complete = ops.all(person_to_object >= 0)
    # The bound of the permutation returned: recomputed if it was filled in.
    bound = ops.where(complete, bound, _bound(cost, prices, columns))
    bound = ops.where(done & (rounds == 0), 0.0, bound)
    return columns, {
        "rounds": rounds,
        "sinkhorn_iterations": ops.convert_to_tensor(sinkhorn_iterations, "int32"),
        "gap_bound": bound,
        "converged": bound <= tolerance,
        "tail_steps": tail_steps,
    }
