"""On-device k-means: seeding, Lloyd iterations, assignment and the farthest map.

CURE (SPEC section 2) clusters teacher and student embeddings with k-means, labels each forget
point with its nearest forget centroid, and maps that label to the farthest centroid. Everything
here is a pure, jittable function of arrays, so a cluster refresh runs on the accelerator between
training steps without a round trip through the host. The seedings (greedy k-means++, k-means||,
random) and the chunked distance pass live in cure_jax/kmeans_seeding.py, Lloyd's loop (plain,
or with Yinyang's distance bounds) in cure_jax/kmeans_lloyd.py.

Squared distances are computed by matmul, ``||x||^2 - 2 x.c + ||c||^2``, in chunks of points so
that memory stays O(chunk * K) however large N is. Cosine k-means is spherical k-means: squared
Euclidean distance on unit vectors (``2 - 2 cos``), with centroids re-normalised after each update.

Shape legend: N points, D features, K clusters, M chunks of C points (P = M * C, padded),
R restarts.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cure_jax.kmeans_lloyd import ALGORITHMS, LOOPS
from cure_jax.kmeans_seeding import (
    INITS,
    Seeding,
    chunk_sums,
    nearest,
    seed,
    settings,
    to_chunks,
)
from cure_jax.losses.common import l2_normalize


class KMeansResult(NamedTuple):
    """The outcome of :func:`kmeans`.

    Attributes:
        centroids: [K, D] float32 cluster centres (unit rows when ``cosine=True``).
        assignment: [N] int32 index of each point's nearest centroid.
        inertia: scalar float32, sum over points of the squared distance to the assigned
            centroid (on the unit-normalised points when ``cosine=True``).
        iterations: scalar int32, number of Lloyd iterations (centroid updates) run.
        distance_passes: scalar float32, the point-to-centroids distances computed in Lloyd's
            loop, in passes over the N points: ``iterations + 1`` for ``"lloyd"``, fewer for
            ``"yinyang"``.
    """

    centroids: jax.Array
    assignment: jax.Array
    inertia: jax.Array
    iterations: jax.Array
    distance_passes: jax.Array


def _single_run(
    key: jax.Array,
    x_NxD: jax.Array,
    tol: jax.Array,
    *,
    num_clusters: int,
    num_iters: int,
    chunk_size: int,
    seeding: Seeding,
    cosine: bool,
    algorithm: str,
) -> KMeansResult:
    """One k-means run (seeding plus Lloyd) on points already normalised if ``cosine``."""
    n = x_NxD.shape[0]
    # Pad once, outside the loop; the padding is masked by `valid_P`.
    points_MxCxD, sqnorm_MxC, valid_P = to_chunks(x_NxD, chunk_size)
    centroids_KxD = seed(
        key, x_NxD, points_MxCxD, sqnorm_MxC, valid_P, num_clusters=num_clusters, seeding=seeding
    )
    loop = LOOPS[algorithm](
        points_MxCxD, sqnorm_MxC, valid_P, centroids_KxD, tol,
        num_points=n, num_iters=num_iters, cosine=cosine,
    )
    # The expanded form loses ~eps * ||x||^2 per point; the final inertia (which also picks the
    # best restart) is worth one exact O(N * D) pass (chunk by chunk: 5-6x faster on XLA:CPU).
    assign_MxC = loop.assignment.reshape(sqnorm_MxC.shape)

    def chunk_inertia(x_CxD, assign_C, valid_C):
        return jnp.sum(valid_C * jnp.sum((x_CxD - loop.centroids[assign_C]) ** 2, axis=-1))

    inertia = jnp.sum(
        chunk_sums(chunk_inertia, points_MxCxD, assign_MxC, valid_P.reshape(sqnorm_MxC.shape))
    )
    return KMeansResult(
        loop.centroids, loop.assignment[:n], inertia, loop.iterations, loop.distance_passes
    )


def _prepare(points_NxD: jax.Array, cosine: bool) -> tuple[jax.Array, jax.Array]:
    """The float32 points k-means works on ([N, D]) and the [D] shift to add back to centroids."""
    x_NxD = points_NxD.astype(jnp.float32)
    # k-means is translation invariant; centring (as scikit-learn does) keeps the expanded
    # distance ||x||^2 - 2 x.c + ||c||^2 from cancelling away float32 digits far from the origin.
    # Spherical k-means needs the origin where it is.
    shift_D = jnp.zeros_like(x_NxD[0]) if cosine else jnp.mean(x_NxD, axis=0)
    return (l2_normalize(x_NxD) if cosine else x_NxD - shift_D), shift_D


_STATIC = ("num_clusters", "num_iters", "num_restarts", "cosine", "chunk_size", "seeding",
           "algorithm")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _kmeans_jit(
    key: jax.Array,
    points_NxD: jax.Array,
    tol: jax.Array,
    *,
    num_clusters: int,
    num_iters: int,
    num_restarts: int,
    cosine: bool,
    chunk_size: int,
    seeding: Seeding,
    algorithm: str,
) -> KMeansResult:
    x_NxD, shift_D = _prepare(points_NxD, cosine)
    run = functools.partial(
        _single_run,
        num_clusters=num_clusters,
        num_iters=num_iters,
        chunk_size=chunk_size,
        seeding=seeding,
        cosine=cosine,
        algorithm=algorithm,
    )
    if num_restarts == 1:
        # No vmap for one run: keeps the empty-cluster `cond` a real branch.
        result = run(key, x_NxD, tol)
    else:
        keys_R = jax.random.split(key, num_restarts)
        if algorithm == "yinyang":
            # One restart after another: under vmap its branches (the empty-cluster reseed, the
            # `tol` inertia) would all run, and every restart would re-measure as many blocks as
            # the one with most to re-measure (three restarts at N = 36,000: 1.4-1.7x Lloyd's
            # time under vmap, 0.64-0.92x one after another; docs/PERFORMANCE.md).
            results_R = jax.lax.map(lambda key_R: run(key_R, x_NxD, tol), keys_R)
        else:
            results_R = jax.vmap(run, in_axes=(0, None, None))(keys_R, x_NxD, tol)
        best = jnp.argmin(results_R.inertia)
        result = jax.tree.map(lambda leaf: leaf[best], results_R)
    return result._replace(centroids=result.centroids + shift_D)


def kmeans(
    key: jax.Array,
    points_NxD: jax.Array,
    *,
    num_clusters: int,
    num_iters: int = 20,
    num_restarts: int = 1,
    cosine: bool = False,
    tol: float = 0.0,
    chunk_size: int = 4096,
    init: str = "k-means++",
    num_local_trials: int | None = None,
    parallel_rounds: int = 3,
    oversampling: float = 1.0,
    algorithm: str = "lloyd",
) -> KMeansResult:
    """k-means (Lloyd) with k-means++ or k-means|| seeding, restarts batched on device; the best
    inertia wins.

    The loop stops after ``num_iters`` updates, or earlier when the assignments stop changing, or
    when the inertia changes by less than ``tol`` relative to the previous one. Compiled once per
    input shape and set of static arguments; ``tol`` is traced, so changing it does not recompile.

    Args:
        key: PRNG key; the restarts use ``jax.random.split(key, num_restarts)`` (the key itself
            when ``num_restarts == 1``).
        points_NxD: [N, D] points (cast to float32).
        num_clusters: K, 1 <= K <= N.
        num_iters: the most Lloyd iterations (centroid updates) per run, >= 1.
        num_restarts: R independent runs, batched with ``vmap`` (one after another with
            ``algorithm="yinyang"``).
        cosine: spherical k-means: L2-normalise the points, re-normalise the centroids after
            every update; distances are squared Euclidean on the unit sphere (``2 - 2 cos``).
        tol: relative inertia change under which to stop; 0 runs until the assignments settle.
        chunk_size: most points per distance block; memory is O(chunk_size * K).
        init: ``"k-means++"`` (greedy, as scikit-learn: one pass over the points per centre),
            ``"k-means||"`` (one pass per round, then greedy k-means++ on the weighted
            candidates: at large K a fraction of k-means++'s seeding cost for a final inertia
            within a fraction of a percent of it; docs/PERFORMANCE.md) or ``"random"`` (K
            distinct points).
        num_local_trials: greedy k-means++ candidates per centre, also in k-means||'s
            recluster; None gives ``2 + floor(ln K)``, four times that in the recluster (whose
            candidates cost a read of its small pool, not a pass over the points).
        parallel_rounds: k-means|| rounds G, >= 1 (ignored by the other seedings).
        oversampling: k-means|| candidates drawn per round, as a multiple of K (rounded up);
            G rounds must draw at least K in all (ignored by the other seedings).
        algorithm: ``"lloyd"`` (a full distance pass per iteration) or ``"yinyang"`` (the same
            assignments, up to rounding ties, with distance bounds that skip the points whose
            centroid cannot have changed; cure_jax/kmeans_lloyd.py, which says where float32
            products of lower precision loosen that). Yinyang pays off on many points with
            many clusters (docs/PERFORMANCE.md); it keeps [N, K / 4] lower bounds.

    Returns:
        KMeansResult: centroids [K, D], assignment int32 [N], inertia scalar, iterations int32
        scalar, of the best restart.

    Raises:
        ValueError: if the points are not 2-D, K < 1 or K > N, or another argument is out of
            range; raised before any tracing.
    """
    points_NxD = jnp.asarray(points_NxD)
    _check_kmeans_args(
        points_NxD.shape, num_clusters, num_iters, num_restarts, chunk_size, init, tol
    )
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    return _kmeans_jit(
        key,
        points_NxD,
        jnp.asarray(tol, jnp.float32),
        num_clusters=num_clusters,
        num_iters=num_iters,
        num_restarts=num_restarts,
        cosine=cosine,
        chunk_size=chunk_size,
        seeding=settings(init, num_clusters, num_local_trials, parallel_rounds, oversampling),
        algorithm=algorithm,
    )


@functools.partial(jax.jit, static_argnames=("num_clusters", "cosine", "chunk_size", "seeding"))
def _init_jit(key, points_NxD, *, num_clusters, cosine, chunk_size, seeding) -> jax.Array:
    x_NxD, shift_D = _prepare(points_NxD, cosine)
    points_MxCxD, sqnorm_MxC, valid_P = to_chunks(x_NxD, chunk_size)
    centroids_KxD = seed(
        key, x_NxD, points_MxCxD, sqnorm_MxC, valid_P, num_clusters=num_clusters, seeding=seeding
    )
    return centroids_KxD + shift_D


def kmeans_init(
    key: jax.Array,
    points_NxD: jax.Array,
    *,
    num_clusters: int,
    cosine: bool = False,
    chunk_size: int = 4096,
    init: str = "k-means++",
    num_local_trials: int | None = None,
    parallel_rounds: int = 3,
    oversampling: float = 1.0,
) -> jax.Array:
    """The initial centroids of a single-run :func:`kmeans` with the same arguments, alone.

    For timing or comparing seedings: ``kmeans(key, x, num_clusters=K, init=...)`` starts Lloyd
    from ``kmeans_init(key, x, num_clusters=K, init=...)``.

    Returns:
        [K, D] float32 centroids, each one of the points (its unit vector when ``cosine``).

    Raises:
        ValueError: as :func:`kmeans`.
    """
    points_NxD = jnp.asarray(points_NxD)
    _check_kmeans_args(points_NxD.shape, num_clusters, 1, 1, chunk_size, init, 0.0)
    return _init_jit(
        key,
        points_NxD,
        num_clusters=num_clusters,
        cosine=cosine,
        chunk_size=chunk_size,
        seeding=settings(init, num_clusters, num_local_trials, parallel_rounds, oversampling),
    )


def _check_kmeans_args(shape, num_clusters, num_iters, num_restarts, chunk_size, init, tol) -> None:
    """Raises ValueError on a bad argument of :func:`kmeans` but the seeding's, which
    ``kmeans_seeding.settings`` checks."""
    if len(shape) != 2:
        raise ValueError(f"points must be 2-D [N, D], got shape {shape}")
    n = shape[0]
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    if num_clusters > n:
        raise ValueError(f"more clusters than points: K={num_clusters}, N={n}")
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    if num_restarts < 1:
        raise ValueError(f"num_restarts must be >= 1, got {num_restarts}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(tol, int | float) and tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def _check_pair(points_NxD: jax.Array, centroids_KxD: jax.Array, chunk_size: int) -> None:
    x_shape, c_shape = points_NxD.shape, centroids_KxD.shape
    if len(x_shape) != 2 or len(c_shape) != 2:
        raise ValueError(f"points and centroids must be 2-D, got {x_shape} and {c_shape}")
    if x_shape[1] != c_shape[1]:
        raise ValueError(f"feature sizes differ: points {x_shape}, centroids {c_shape}")
    if c_shape[0] < 1:
        raise ValueError("need at least one centroid")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _assign_jit(points_NxD: jax.Array, centroids_KxD: jax.Array, *, chunk_size: int) -> jax.Array:
    c_KxD = centroids_KxD.astype(jnp.float32)
    # Centring on the centroids' mean changes no distance and reduces float32 cancellation.
    shift_D = jnp.mean(c_KxD, axis=0)
    x_MxCxD, sqnorm_MxC, _ = to_chunks(points_NxD.astype(jnp.float32) - shift_D, chunk_size)
    assign_P, _ = nearest(x_MxCxD, sqnorm_MxC, c_KxD - shift_D)
    return assign_P[: points_NxD.shape[0]]


def assign(points_NxD: jax.Array, centroids_KxD: jax.Array, *, chunk_size: int = 4096) -> jax.Array:
    """Index of each point's nearest centroid in squared Euclidean distance.

    For cosine clusters pass unit points: on the sphere the nearest centroid in Euclidean
    distance is the one of highest cosine. Ties go to the lowest index.

    Args:
        points_NxD: [N, D] points.
        centroids_KxD: [K, D] centroids.
        chunk_size: most points per distance block; memory is O(chunk_size * K).

    Returns:
        [N] int32 nearest-centroid indices.

    Raises:
        ValueError: if either array is not 2-D, their D differ, or K = 0.
    """
    points_NxD, centroids_KxD = jnp.asarray(points_NxD), jnp.asarray(centroids_KxD)
    _check_pair(points_NxD, centroids_KxD, chunk_size)
    return _assign_jit(points_NxD, centroids_KxD, chunk_size=chunk_size)


@jax.jit
def farthest_cluster_map(centroids_KxD: jax.Array) -> jax.Array:
    """CURE's farthest map ``phi(k) = argmax_{k' != k} ||c_k - c_k'||^2`` (SPEC 2, step 2).

    Args:
        centroids_KxD: [K, D] centroids.

    Returns:
        [K] int32, the farthest other centroid of each; ``phi(k) != k`` whenever K > 1 (with
        K = 1 the only cluster maps to itself). Ties go to the lowest index.
    """
    c_KxD = centroids_KxD.astype(jnp.float32)
    c_KxD = c_KxD - jnp.mean(c_KxD, axis=0)  # fewer cancelled digits, same distances
    sq_K = jnp.sum(c_KxD**2, axis=-1)
    dist_KxK = jnp.maximum(sq_K[:, None] - 2.0 * (c_KxD @ c_KxD.T) + sq_K[None, :], 0.0)
    # -inf on the diagonal excludes k itself even when other centroids coincide with it.
    k = c_KxD.shape[0]
    dist_KxK = jnp.where(jnp.eye(k, dtype=bool), -jnp.inf, dist_KxK)
    return jnp.argmax(dist_KxK, axis=-1).astype(jnp.int32)


def pseudo_labels(
    points_NxD: jax.Array, centroids_KxD: jax.Array, *, chunk_size: int = 4096
) -> tuple[jax.Array, jax.Array]:
    """CURE's base labels ``l(x)`` and pseudo-labels ``y~(x) = phi(l(x))``: the nearest cluster,
    and the farthest cluster from it.

    Args:
        points_NxD: [N, D] points (unit embeddings in CURE).
        centroids_KxD: [K, D] centroids.
        chunk_size: most points per distance block.

    Returns:
        ([N] int32 nearest cluster, [N] int32 pseudo-label), both in [0, K).

    Raises:
        ValueError: as :func:`assign`.
    """
    nearest_N = assign(points_NxD, centroids_KxD, chunk_size=chunk_size)
    return nearest_N, farthest_cluster_map(centroids_KxD)[nearest_N]
