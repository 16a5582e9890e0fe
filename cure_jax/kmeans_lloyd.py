"""Lloyd's iterations for k-means on device: the plain loop and the same loop with distance bounds.

Both loops start from seeded centroids (cure_jax/kmeans_seeding.py) and alternate a centroid
update with an assignment until the assignments settle, the inertia changes by less than ``tol``,
or ``num_iters`` updates have run; cure_jax/clustering.py wraps them.

- ``lloyd``: every assignment is a full distance pass over the points.
- ``yinyang``: the global filter of Yinyang k-means (Ding et al. 2015, "Yinyang K-Means: A
  Drop-In Replacement of the Classic K-Means with Consistent Speedup"). Each point keeps an upper
  bound on the distance to its centroid and, for each group of a few centroids, a lower bound on
  the distance to the group's other centroids. When the centroids move, the bounds move by the
  shifts (triangle inequality); a point whose upper bound stays below all its lower bounds keeps
  its centroid without a distance computed. The others are gathered into blocks and measured
  against every centroid (Yinyang's second, per-group filter is left out: on a vector machine a
  whole row costs one product). Its assignments are Lloyd's: the bounds carry a margin for the
  rounding of the expanded distance, so a point is skipped only when its centroid is nearest in
  Lloyd's own float32 arithmetic too (ties within rounding are always measured again). The
  margin is that of float32 products, as CPUs compute them. By default recent NVIDIA GPUs
  multiply float32 in TF32 and TPUs in bfloat16 passes, with errors far above it: there a point
  whose two nearest centroids are within that error of each other may keep a centroid Lloyd
  would change, unless ``jax_default_matmul_precision`` is "highest".

Shape legend: N points, D features, K clusters, M chunks of C points (P = M * C, padded),
G groups of S centroids (G * S >= K), R rows in one block of re-measured points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cure_jax.kmeans_seeding import chunk_sums, nearest, row_min_and_argmin
from cure_jax.losses.common import l2_normalize

# Centroids per group of Yinyang's lower bounds. Smaller groups keep tighter bounds (one moving
# centroid loosens only its own group's) at G lower bounds per point; 4 was as fast as any size
# from 1 to 8 at N = 36,000, K = 100 and 1,000, with a quarter of the memory of 1
# (docs/PERFORMANCE.md).
GROUP_SIZE = 4
# The lower bounds of all points take at most this many floats (128 MB); beyond it groups grow.
MAX_BOUND_FLOATS = 2**25
# Points re-measured per block: large enough for an efficient product, small enough that a
# mostly settled iteration measures few padding rows.
BLOCK_ROWS = 2048


class LloydResult(NamedTuple):
    """The end state of a Lloyd loop.

    Attributes:
        centroids: [K, D] float32.
        assignment: [P] int32 nearest centroid of each (padded) point, for those centroids.
        iterations: int32 scalar, centroid updates run.
        distance_passes: float32 scalar, point-to-all-centroids distance rows computed, in passes
            over the N points (Lloyd: ``iterations + 1``).
    """

    centroids: jax.Array
    assignment: jax.Array
    iterations: jax.Array
    distance_passes: jax.Array


def update_centroids(
    points_PxD: jax.Array,
    valid_P: jax.Array,
    assign_P: jax.Array,
    distances_P: Callable[[], jax.Array],
    centroids_KxD: jax.Array,
    *,
    cosine: bool,
) -> tuple[jax.Array, jax.Array]:
    """One centroid update: cluster means, with empty clusters re-seeded.

    An empty cluster takes the point farthest from its own centroid (the e-th empty cluster takes
    the e-th farthest point), and that point leaves its old cluster, as in scikit-learn. The
    reseeded centroids claim those points at the next assignment. ``points_PxD`` is padded with
    zero rows, which ``valid_P`` (1 real, 0 padding) masks. ``distances_P()`` gives each point's
    squared distance to its centroid in ``centroids_KxD``; it is called only when a cluster is
    empty. Returns the [K, D] new centroids and whether any cluster was empty.
    """
    k = centroids_KxD.shape[0]
    # Padding rows are zeros, so they add nothing to the sums; only the counts need the mask.
    sums_KxD = jax.ops.segment_sum(points_PxD, assign_P, num_segments=k)
    counts_K = jax.ops.segment_sum(valid_P, assign_P, num_segments=k)

    def reseed(args):
        sums_KxD, counts_K = args
        empty_K = counts_K == 0
        # Padding must never be chosen: give it a distance below any real one.
        _, far_K = jax.lax.top_k(jnp.where(valid_P > 0, distances_P(), -1.0), k)
        rank_K = jnp.cumsum(empty_K) - 1
        src_K = far_K[jnp.clip(rank_K, 0, k - 1)]
        moved_KxD = jnp.where(empty_K[:, None], points_PxD[src_K], 0.0)
        moved_K = empty_K.astype(counts_K.dtype)
        old_K = assign_P[src_K]
        sums_KxD = sums_KxD - jax.ops.segment_sum(moved_KxD, old_K, num_segments=k) + moved_KxD
        counts_K = counts_K - jax.ops.segment_sum(moved_K, old_K, num_segments=k) + moved_K
        return sums_KxD, counts_K

    # Empty clusters are rare: skip the top-k unless there is one (under vmap both branches run).
    any_empty = jnp.any(counts_K == 0)
    sums_KxD, counts_K = jax.lax.cond(any_empty, reseed, lambda args: args, (sums_KxD, counts_K))
    # A cluster can only still be empty if reseeding took its last point; it keeps its centroid.
    new_KxD = jnp.where(
        counts_K[:, None] > 0, sums_KxD / jnp.maximum(counts_K, 1.0)[:, None], centroids_KxD
    )
    return (l2_normalize(new_KxD) if cosine else new_KxD), any_empty


def _stop(inertia, new_inertia, assign_P, new_assign_P, reseeded, tol, num_points):
    """Whether a loop ends after an assignment: the assignments settled or the inertia changed
    by less than ``tol`` of itself, unless the update reseeded a cluster."""
    # Only real points count: padding rows are equidistant from unit centroids, and their argmin
    # can flip on rounding alone.
    settled = jnp.all(new_assign_P[:num_points] == assign_P[:num_points])
    # Strict `<`, so that tol = 0 stops only when the assignments settle.
    small_change = jnp.abs(inertia - new_inertia) < tol * inertia
    # Never stop right after a reseed: the farthest points were measured from the old centroids,
    # so a reseeded centroid can land on a point whose cluster keeps it (a duplicate centroid,
    # still empty); the next update reseeds from fresh distances.
    return jnp.logical_and(jnp.logical_or(settled, small_change), jnp.logical_not(reseeded))


def lloyd(
    points_MxCxD: jax.Array,
    sqnorm_MxC: jax.Array,
    valid_P: jax.Array,
    centroids_KxD: jax.Array,
    tol: jax.Array,
    *,
    num_points: int,
    num_iters: int,
    cosine: bool,
) -> LloydResult:
    """Lloyd's loop, a full distance pass per assignment."""
    points_PxD = points_MxCxD.reshape(-1, points_MxCxD.shape[-1])

    def e_step(centroids_KxD):
        assign_P, dist_P = nearest(points_MxCxD, sqnorm_MxC, centroids_KxD)
        return assign_P, dist_P, jnp.sum(dist_P * valid_P)

    # Each iteration is an update followed by an assignment, so the loop always ends with an
    # assignment that belongs to the returned centroids, whichever criterion stops it.
    def cond(state):
        it, _, _, _, _, done = state
        return jnp.logical_and(it < num_iters, jnp.logical_not(done))

    def body(state):
        it, centroids_KxD, assign_P, dist_P, inertia, _ = state
        centroids_KxD, reseeded = update_centroids(
            points_PxD, valid_P, assign_P, lambda: dist_P, centroids_KxD, cosine=cosine
        )
        new_assign_P, new_dist_P, new_inertia = e_step(centroids_KxD)
        done = _stop(inertia, new_inertia, assign_P, new_assign_P, reseeded, tol, num_points)
        return it + 1, centroids_KxD, new_assign_P, new_dist_P, new_inertia, done

    assign_P, dist_P, inertia = e_step(centroids_KxD)
    state = (jnp.int32(0), centroids_KxD, assign_P, dist_P, inertia, jnp.bool_(False))
    it, centroids_KxD, assign_P, _, _, _ = jax.lax.while_loop(cond, body, state)
    return LloydResult(centroids_KxD, assign_P, it, (it + 1).astype(jnp.float32))


def groups_of(num_clusters: int, num_rows: int, group_size: int = GROUP_SIZE) -> tuple[int, int]:
    """(G groups, S centroids per group) of Yinyang's lower bounds for K clusters and P rows:
    groups of `group_size`, or larger where the bounds would exceed MAX_BOUND_FLOATS."""
    groups = max(1, min(-(-num_clusters // group_size), MAX_BOUND_FLOATS // num_rows))
    size = -(-num_clusters // groups)
    return -(-num_clusters // size), size


def rounding_slack(sqnorm_P: jax.Array, valid_P: jax.Array, dim: int) -> jax.Array:
    """[P] bound on the float32 rounding of each point's expanded squared distances.

    ``||x||^2 - 2 x.c + ||c||^2`` computed in float32 is off by at most about
    ``D eps (||x||^2 + ||c||^2)`` (a dot product of length D errs by at most ``D eps / 2`` of
    ``|x| |c|`` in any summation order; ``2 |x| |c| <= ||x||^2 + ||c||^2``), plus a few roundings
    of the sums. A centroid is a mean of points or a point, so ``||c||^2`` is at most the largest
    ``||x||^2``.
    """
    largest = jnp.max(sqnorm_P * valid_P)
    return (dim + 4) * jnp.finfo(jnp.float32).eps * (sqnorm_P + largest)


def _rows_with_bounds(x_RxD, xsq_R, slack_R, centroids_KxD, *, groups: int, group_size: int):
    """Nearest centroid of each row, its squared distance, and the distance bounds.

    The argmin is :func:`cure_jax.kmeans_seeding.nearest`'s (same expanded form, lowest index at
    the minimum). With ``slack_R`` from :func:`rounding_slack`, ``upper_R = sqrt(d_own + slack)``
    is at least the exact distance to the row's centroid and ``lower_RxG =
    sqrt(d_group_min - slack)`` at most the exact distance to any other centroid of each group.
    Returns ([R] int32, [R] squared distance, [R] upper bound, [R, G] lower bounds).
    """
    k = centroids_KxD.shape[0]
    padded = groups * group_size
    csq_K = jnp.sum(centroids_KxD**2, axis=-1)
    # Padding centroids are infinitely far: never nearest, and no bound of a group.
    csq_Kp = jnp.pad(csq_K, (0, padded - k), constant_values=jnp.inf)
    c_KpxD = jnp.pad(centroids_KxD, ((0, padded - k), (0, 0)))
    partial_RxKp = csq_Kp[None, :] - 2.0 * (x_RxD @ c_KpxD.T)
    min_R, idx_R = row_min_and_argmin(partial_RxKp)
    idx_R = jnp.minimum(idx_R, k - 1)  # a NaN row, as in `nearest`
    iota_Kp = jnp.arange(padded, dtype=jnp.int32)
    others_RxGxS = jnp.where(iota_Kp == idx_R[:, None], jnp.inf, partial_RxKp).reshape(
        -1, groups, group_size
    )
    dist_R = jnp.maximum(xsq_R + min_R, 0.0)
    upper_R = jnp.sqrt(dist_R + slack_R)
    others_RxG = xsq_R[:, None] + jnp.min(others_RxGxS, axis=-1)
    lower_RxG = jnp.sqrt(jnp.maximum(others_RxG - slack_R[:, None], 0.0))
    return idx_R, dist_R, upper_R, lower_RxG


def yinyang(
    points_MxCxD: jax.Array,
    sqnorm_MxC: jax.Array,
    valid_P: jax.Array,
    centroids_KxD: jax.Array,
    tol: jax.Array,
    *,
    num_points: int,
    num_iters: int,
    cosine: bool,
    group_size: int = GROUP_SIZE,
) -> LloydResult:
    """Lloyd's loop with Yinyang's global filter: only points whose bounds do not prove their
    centroid nearest are measured again (module docstring)."""
    d = points_MxCxD.shape[-1]
    points_PxD = points_MxCxD.reshape(-1, d)
    sqnorm_P = sqnorm_MxC.reshape(-1)
    num_rows = points_PxD.shape[0]
    k = centroids_KxD.shape[0]
    groups, group_size = groups_of(k, num_rows, group_size)
    block = min(BLOCK_ROWS, points_MxCxD.shape[1])
    rows = dict(groups=groups, group_size=group_size)
    slack_P = rounding_slack(sqnorm_P, valid_P, d)

    def own_distances(centroids_KxD, assign_P):
        # The expanded form, as the full pass computes it (its rows gathered), chunk by chunk.
        def chunk_distances(x_CxD, xsq_C, assign_C):
            c_CxD = centroids_KxD[assign_C]
            products_C = jnp.sum(x_CxD * c_CxD, axis=-1)
            return jnp.maximum(xsq_C + jnp.sum(c_CxD**2, axis=-1) - 2.0 * products_C, 0.0)

        assign_MxC = assign_P.reshape(sqnorm_MxC.shape)
        return chunk_sums(chunk_distances, points_MxCxD, sqnorm_MxC, assign_MxC).reshape(-1)

    def inertia_of(centroids_KxD, assign_P):
        # Only the `tol` test reads it: with tol = 0 the gather is skipped (under vmap both
        # branches run).
        return jax.lax.cond(
            tol > 0,
            lambda: jnp.sum(own_distances(centroids_KxD, assign_P) * valid_P),
            lambda: jnp.float32(0.0),
        )

    def remeasure(need_P, centroids_KxD, assign_P, upper_P, lower_PxG):
        """Measures the points of `need_P` against every centroid, a block of rows at a time."""
        count = jnp.sum(need_P.astype(jnp.int32))
        # Indices of the points to measure, then `num_rows` (out of range: dropped) as filler.
        idx = jnp.nonzero(need_P, size=num_rows + block, fill_value=num_rows)[0]

        def one_block(state):
            i, assign_P, upper_P, lower_PxG = state
            idx_R = jax.lax.dynamic_slice(idx, (i * block,), (block,))
            x_RxD = points_PxD.at[idx_R].get(mode="fill", fill_value=0.0)
            xsq_R = sqnorm_P.at[idx_R].get(mode="fill", fill_value=0.0)
            slack_R = slack_P.at[idx_R].get(mode="fill", fill_value=0.0)
            a_R, _, up_R, low_RxG = _rows_with_bounds(
                x_RxD, xsq_R, slack_R, centroids_KxD, **rows
            )
            return (
                i + 1,
                assign_P.at[idx_R].set(a_R, mode="drop"),
                upper_P.at[idx_R].set(up_R, mode="drop"),
                lower_PxG.at[idx_R].set(low_RxG, mode="drop"),
            )

        state = (jnp.int32(0), assign_P, upper_P, lower_PxG)
        _, assign_P, upper_P, lower_PxG = jax.lax.while_loop(
            lambda state: state[0] * block < count, one_block, state
        )
        return assign_P, upper_P, lower_PxG, count

    def cond(state):
        it, _, _, _, _, _, done, _ = state
        return jnp.logical_and(it < num_iters, jnp.logical_not(done))

    def body(state):
        it, old_KxD, assign_P, upper_P, lower_PxG, inertia, _, measured = state
        centroids_KxD, reseeded = update_centroids(
            points_PxD, valid_P, assign_P, lambda: own_distances(old_KxD, assign_P), old_KxD,
            cosine=cosine,
        )
        # Triangle inequality: a distance moves by at most the centroid's shift (rounded up by
        # more than the rounding of its sum of D squares).
        shift_K = jnp.sqrt(jnp.sum((centroids_KxD - old_KxD) ** 2, axis=-1))
        shift_K = shift_K * (1.0 + (d + 4) * jnp.finfo(jnp.float32).eps)
        padded_shift = jnp.pad(shift_K, (0, groups * group_size - k))
        group_shift_G = jnp.max(padded_shift.reshape(groups, group_size), axis=-1)
        upper_P = upper_P + shift_K[assign_P]
        lower_PxG = lower_PxG - group_shift_G[None, :]
        # Skipped only when Lloyd's rounded distances would also rank the centroid first: its
        # computed distance is at most upper^2 + slack, any other's at least lower^2 - slack.
        lowest_P = jnp.maximum(jnp.min(lower_PxG, axis=-1), 0.0)
        need_P = jnp.logical_and(valid_P > 0, upper_P**2 + 2.0 * slack_P >= lowest_P**2)
        new_assign_P, upper_P, lower_PxG, count = remeasure(
            need_P, centroids_KxD, assign_P, upper_P, lower_PxG
        )
        new_inertia = inertia_of(centroids_KxD, new_assign_P)
        done = _stop(inertia, new_inertia, assign_P, new_assign_P, reseeded, tol, num_points)
        measured = measured + count.astype(jnp.float32) / num_points
        return it + 1, centroids_KxD, new_assign_P, upper_P, lower_PxG, new_inertia, done, measured

    assign_MxC, dist_MxC, upper_MxC, lower_MxCxG = jax.lax.map(
        lambda chunk: _rows_with_bounds(*chunk, centroids_KxD, **rows),
        (points_MxCxD, sqnorm_MxC, slack_P.reshape(sqnorm_MxC.shape)),
    )
    assign_P = assign_MxC.reshape(-1)
    # The first inertia as Lloyd's; later ones, which only the `tol` test reads, from the gather.
    inertia = jnp.sum(dist_MxC.reshape(-1) * valid_P)
    state = (jnp.int32(0), centroids_KxD, assign_P, upper_MxC.reshape(-1),
             lower_MxCxG.reshape(num_rows, groups), inertia, jnp.bool_(False), jnp.float32(1.0))
    it, centroids_KxD, assign_P, _, _, _, _, measured = jax.lax.while_loop(cond, body, state)
    return LloydResult(centroids_KxD, assign_P, it, measured)


LOOPS = {"lloyd": lloyd, "yinyang": yinyang}
ALGORITHMS = tuple(LOOPS)
