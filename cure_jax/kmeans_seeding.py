"""k-means seeding on device: greedy k-means++, k-means|| and random; the chunked distance pass.

Greedy k-means++ (scikit-learn's variant) reads every point once per centre: K passes over the
data, each a product with only T columns, so at large K it costs more than the Lloyd iterations
that follow (docs/PERFORMANCE.md). k-means|| (Bahmani et al. 2012, "Scalable k-means++") reads
the points once per round instead, in full matrix products, and leaves a pool of a few times K
weighted candidates, which greedy k-means++ reduces to K. Both pick centroids among the points.

Squared distances are computed by matmul, ``||x||^2 - 2 x.c + ||c||^2``, in chunks of points so
that memory stays O(chunk * K) however large N is; Lloyd (cure_jax/clustering.py) uses the same
pass.

Shape legend: N points, D features, K clusters, T k-means++ local trials, M chunks of C points
(P = M * C, padded); k-means||: G rounds of L candidates, Q = 1 + G * L in the pool.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

INITS = ("k-means++", "k-means||", "random")
# k-means||'s recluster takes the Gram matrix of its pool up to this many candidates (256 MB in
# float32); above it, and whenever the pool outnumbers the K * T candidates the recluster tries,
# the Gram matrix would cost more than it saves.
GRAM_MAX_POINTS = 8_192
# k-means||'s recluster tries this many times the candidates per centre that greedy k-means++
# tries on the data. A candidate there costs a pass over the data; in the recluster a read of the
# small pool (or of Gram rows). At N = 36,000, D = 512 four times as many lowered the final
# inertia by 0.6% at K = 1,000 for 3% more seeding time (docs/PERFORMANCE.md).
RECLUSTER_TRIALS_FACTOR = 4


class Seeding(NamedTuple):
    """How a run picks its initial centroids (hashable: a static argument of the jit)."""

    init: str  # one of INITS
    num_trials: int  # greedy k-means++ candidates per centre (k-means||: in its recluster)
    num_rounds: int  # k-means|| rounds
    per_round: int  # k-means|| candidates drawn per round


def to_chunks(x_NxD: jax.Array, chunk_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pads with zero rows to M chunks of C <= chunk_size points (C chosen for little padding).

    Returns the [M, C, D] chunks, their [M, C] squared norms, and [M * C] float32 validity
    (1 for a real point, 0 for padding).
    """
    n, d = x_NxD.shape
    num_chunks = -(-n // chunk_size)
    chunk = -(-n // num_chunks)
    pad = num_chunks * chunk - n
    x_MxCxD = jnp.pad(x_NxD, ((0, pad), (0, 0))).reshape(num_chunks, chunk, d)
    valid_P = jnp.pad(jnp.ones((n,), jnp.float32), (0, pad))
    return x_MxCxD, chunk_sums(lambda x_CxD: jnp.sum(x_CxD**2, axis=-1), x_MxCxD), valid_P


def chunk_sums(row_sums, *chunks):
    """``row_sums`` applied to one chunk after another of arrays with a leading chunk axis [M, ...].

    For reductions over the points of an expression (``sum(x**2, -1)``, say): XLA:CPU runs such a
    fused reduction several times slower once its operand outgrows the cache, and a chunk at a
    time keeps it there. Squared norms of [36,000, 512] took 35-45 ms in one reduction and 6-7 ms
    in 9 chunks, with identical results (docs/PERFORMANCE.md).
    """
    return jax.lax.map(lambda args: row_sums(*args), chunks)


def row_min_and_argmin(values_CxK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[C] minimum of each row and the lowest index (int32) at it, as ``argmin`` gives."""
    k = values_CxK.shape[-1]
    iota_K = jnp.arange(k, dtype=jnp.int32)
    min_C = jnp.min(values_CxK, axis=-1)
    # The argmin as two plain min-reductions: XLA:CPU vectorises those, not argmin's paired
    # (value, index) reduction; the distance pass at N = 36,000, K = 1,000 ran 7-30% faster, with
    # identical results. The clip only matters for a NaN row, which matches no index.
    idx_C = jnp.min(jnp.where(values_CxK == min_C[:, None], iota_K, k), axis=-1)
    return min_C, jnp.minimum(idx_C, k - 1)


def nearest(
    points_MxCxD: jax.Array, sqnorm_MxC: jax.Array, centroids_KxD: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """[M * C] nearest-centroid index (int32) and squared distance to it, chunk by chunk."""
    csq_K = jnp.sum(centroids_KxD**2, axis=-1)

    def one_chunk(args):
        x_CxD, xsq_C = args
        # ||x||^2 is the same for every centroid: leave it out of the argmin, add it back after.
        partial_CxK = csq_K[None, :] - 2.0 * (x_CxD @ centroids_KxD.T)
        min_C, idx_C = row_min_and_argmin(partial_CxK)
        # Cancellation in the expanded form can go slightly negative; a distance cannot.
        return idx_C, jnp.maximum(xsq_C + min_C, 0.0)

    idx_MxC, dist_MxC = jax.lax.map(one_chunk, (points_MxCxD, sqnorm_MxC))
    return idx_MxC.reshape(-1), dist_MxC.reshape(-1)


def settings(init, num_clusters, num_local_trials, parallel_rounds, oversampling) -> Seeding:
    """The static seeding settings of ``cure_jax.clustering.kmeans``; ValueError on a bad one."""
    if num_local_trials is not None and num_local_trials < 1:
        raise ValueError(f"num_local_trials must be >= 1, got {num_local_trials}")
    if init == "random":  # nothing to set: one compilation whatever the other values
        return Seeding(init, 0, 0, 0)
    # scikit-learn's default for greedy k-means++.
    greedy_trials = 2 + int(math.log(num_clusters))
    if init == "k-means++":
        return Seeding(init, num_local_trials or greedy_trials, 0, 0)
    num_trials = num_local_trials or RECLUSTER_TRIALS_FACTOR * greedy_trials
    if parallel_rounds < 1:
        raise ValueError(f"parallel_rounds must be >= 1, got {parallel_rounds}")
    if not oversampling > 0:
        raise ValueError(f"oversampling must be > 0, got {oversampling}")
    per_round = math.ceil(oversampling * num_clusters)
    if parallel_rounds * per_round < num_clusters:
        raise ValueError(
            f"k-means|| draws fewer candidates than clusters: parallel_rounds={parallel_rounds} "
            f"x ceil(oversampling={oversampling} x K={num_clusters}) < K"
        )
    return Seeding(init, num_trials, parallel_rounds, per_round)


def _kmeans_plus_plus(
    key: jax.Array,
    x_NxD: jax.Array,
    sqnorm_N: jax.Array,
    *,
    num_clusters: int,
    num_trials: int,
    weight_N: jax.Array | None = None,
    gram: bool = False,
) -> jax.Array:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's greedy variant).

    Each new centre is the best of ``num_trials`` candidates drawn with probability proportional
    to the squared distance to the nearest centre chosen so far; "best" means the lowest total
    squared distance once the candidate is added. With ``weight_N``, point n counts
    ``weight_N[n]`` times in both (k-means||'s recluster step). With ``gram``, the products of
    the points with each other are computed once, as the [N, N] Gram matrix, and each centre's
    step reads T of its rows instead of multiplying all N points again: for few points and many
    centres (k-means||'s pool of 3K + 1) that is one product in place of K sequential ones of T
    columns each. Returns [K, D] centroids taken from the points.
    """
    n = x_NxD.shape[0]
    if gram:
        gram_NxN = x_NxD @ x_NxD.T

        def products_NxT(idx_T):
            # Rows of the Gram matrix, not columns: each is contiguous in memory.
            return gram_NxN[idx_T].T
    else:

        def products_NxT(idx_T):
            return x_NxD @ x_NxD[idx_T].T

    # All the randomness in one draw: each threefry call inside the loop adds compile time.
    u_KxT = jax.random.uniform(key, (num_clusters, num_trials))
    if weight_N is None:
        first = jnp.minimum((u_KxT[0, 0] * n).astype(jnp.int32), n - 1)
    else:
        # The first centre drawn in proportion to the weights, as the uniform draw over points.
        cum_N = jnp.cumsum(weight_N)
        draw = u_KxT[0, 0] * cum_N[-1]
        first = jnp.minimum(jnp.searchsorted(cum_N, draw, method="compare_all"), n - 1)
    centroids_KxD = jnp.zeros((num_clusters, x_NxD.shape[1]), x_NxD.dtype).at[0].set(x_NxD[first])
    first_product_N = gram_NxN[first] if gram else x_NxD @ x_NxD[first]
    closest_N = jnp.maximum(sqnorm_N - 2.0 * first_product_N + sqnorm_N[first], 0.0)

    def body(k, carry):
        centroids_KxD, closest_N = carry
        cdf_N = jnp.cumsum(closest_N if weight_N is None else weight_N * closest_N)
        # Sampling by inverting the CDF: needs no normalisation, and when every distance is zero
        # (all points already are centres) it picks index 0 instead of producing NaN.
        draws_T = u_KxT[k] * cdf_N[-1]
        # compare_all: T x N comparisons are cheap here and compile faster than a binary search.
        cand_T = jnp.minimum(jnp.searchsorted(cdf_N, draws_T, method="compare_all"), n - 1)
        cand_TxD = x_NxD[cand_T]
        dist_NxT = sqnorm_N[:, None] - 2.0 * products_NxT(cand_T) + sqnorm_N[cand_T][None, :]
        dist_NxT = jnp.minimum(jnp.maximum(dist_NxT, 0.0), closest_N[:, None])
        cost_T = jnp.sum(dist_NxT, axis=0) if weight_N is None else weight_N @ dist_NxT
        best = jnp.argmin(cost_T)
        return centroids_KxD.at[k].set(cand_TxD[best]), dist_NxT[:, best]

    centroids_KxD, _ = jax.lax.fori_loop(1, num_clusters, body, (centroids_KxD, closest_N))
    return centroids_KxD


def _kmeans_parallel(
    key: jax.Array,
    points_MxCxD: jax.Array,
    sqnorm_MxC: jax.Array,
    valid_P: jax.Array,
    *,
    num_points: int,
    num_clusters: int,
    num_trials: int,
    num_rounds: int,
    per_round: int,
) -> jax.Array:
    """k-means|| seeding (Bahmani et al. 2012, "Scalable k-means++"), then greedy k-means++ on
    the weighted candidates.

    Greedy k-means++ reads every point once per centre (K passes over the data); this reads it
    once per round, and the recluster reads only the pool, once per centre. Each of
    ``num_rounds`` rounds draws ``per_round`` = L candidates at once, i.i.d. with probability
    proportional to the squared distance to the nearest candidate so far (the paper draws each
    point independently, L on average; a fixed L keeps shapes static).
    Each of the Q = 1 + rounds * L candidates is weighted by the points nearest to it, and
    greedy k-means++ on the weighted candidates picks the K centroids. Distances come from the
    chunked points (``valid_P``: 1 for the first ``num_points``, 0 for padding). Returns [K, D]
    centroids taken from the points.
    """
    d = points_MxCxD.shape[-1]
    points_PxD = points_MxCxD.reshape(-1, d)
    sqnorm_P = sqnorm_MxC.reshape(-1)
    first_key, rounds_key, recluster_key = jax.random.split(key, 3)
    first = jax.random.randint(first_key, (), 0, num_points)
    first_D = points_PxD[first]
    # Padding rows get distance 0: never drawn, and never nearer to a candidate than it counts.
    closest_P = valid_P * jnp.maximum(
        sqnorm_P - 2.0 * (points_PxD @ first_D) + sqnorm_P[first], 0.0
    )
    u_GxL = jax.random.uniform(rounds_key, (num_rounds, per_round))

    def one_round(carry, round_and_draws):
        closest_P, owner_P = carry
        r, u_L = round_and_draws
        # Inverting the CDF, as in k-means++: no normalisation, and no NaN when every distance
        # is zero (index 0 is then drawn, a real point: padding sits at the end).
        cdf_P = jnp.cumsum(closest_P)
        draws_L = jnp.minimum(jnp.searchsorted(cdf_P, u_L * cdf_P[-1]), num_points - 1)
        cand_LxD = points_PxD[draws_L]
        nearest_P, dist_P = nearest(points_MxCxD, sqnorm_MxC, cand_LxD)
        dist_P = valid_P * dist_P
        # Strict: a point keeps its earlier candidate on a tie, so a candidate drawn twice
        # (draws are with replacement) leaves its copy without weight.
        closer_P = dist_P < closest_P
        owner_P = jnp.where(closer_P, 1 + r * per_round + nearest_P, owner_P)
        return (jnp.where(closer_P, dist_P, closest_P), owner_P), cand_LxD

    # A scan, not a Python loop: one copy of the round in the program however many rounds.
    owner_P = jnp.zeros(valid_P.shape, jnp.int32)
    rounds = (jnp.arange(num_rounds, dtype=jnp.int32), u_GxL)
    (_, owner_P), cand_GxLxD = jax.lax.scan(one_round, (closest_P, owner_P), rounds)
    pool_QxD = jnp.concatenate([first_D[None, :], cand_GxLxD.reshape(-1, d)])
    # Each candidate stands for the points nearest to it (padding weighs nothing).
    weight_Q = jax.ops.segment_sum(valid_P, owner_P, num_segments=pool_QxD.shape[0])
    pool_size = pool_QxD.shape[0]
    return _kmeans_plus_plus(
        recluster_key,
        pool_QxD,
        jnp.sum(pool_QxD**2, axis=-1),
        num_clusters=num_clusters,
        num_trials=num_trials,
        weight_N=weight_Q,
        gram=pool_size <= min(GRAM_MAX_POINTS, num_clusters * num_trials),
    )


def seed(
    key: jax.Array,
    x_NxD: jax.Array,
    points_MxCxD: jax.Array,
    sqnorm_MxC: jax.Array,
    valid_P: jax.Array,
    *,
    num_clusters: int,
    seeding: Seeding,
) -> jax.Array:
    """[K, D] initial centroids, taken from the points, by ``seeding.init``."""
    n = x_NxD.shape[0]
    if seeding.init == "k-means++":
        return _kmeans_plus_plus(
            key,
            x_NxD,
            sqnorm_MxC.reshape(-1)[:n],
            num_clusters=num_clusters,
            num_trials=seeding.num_trials,
        )
    if seeding.init == "k-means||":
        return _kmeans_parallel(
            key,
            points_MxCxD,
            sqnorm_MxC,
            valid_P,
            num_points=n,
            num_clusters=num_clusters,
            num_trials=seeding.num_trials,
            num_rounds=seeding.num_rounds,
            per_round=seeding.per_round,
        )
    return x_NxD[jax.random.choice(key, n, (num_clusters,), replace=False)]
