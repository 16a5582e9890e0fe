"""Tests for cure_jax.kmeans_lloyd: Yinyang's bounded loop against Lloyd's, and its bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import make_blobs

from cure_jax import clustering, kmeans_lloyd


def _clusters(seed, n=3_000, d=32, k=10):
    """Fewer blobs than clusters: k-means splits them, slowly, along borders where points keep
    changing sides; the points away from the borders settle and are skipped."""
    x, _ = make_blobs(n, n_features=d, centers=k, cluster_std=1.5, center_box=(-6, 6),
                      random_state=seed)
    return x.astype(np.float32)


@pytest.mark.parametrize(("seed", "num_clusters", "cosine", "init"),
                         [(0, 30, False, "random"), (1, 60, False, "k-means++"),
                          (2, 30, True, "random"), (3, 45, False, "k-means||")])
def test_yinyang_gives_lloyds_result_with_fewer_distances(seed, num_clusters, cosine, init):
    x = _clusters(seed)
    kwargs = dict(num_clusters=num_clusters, num_iters=60, cosine=cosine, init=init)
    lloyd = clustering.kmeans(jax.random.key(seed), x, algorithm="lloyd", **kwargs)
    yinyang = clustering.kmeans(jax.random.key(seed), x, algorithm="yinyang", **kwargs)
    # The same assignment at every iteration gives the same sums, hence the same centroids.
    np.testing.assert_array_equal(yinyang.assignment, lloyd.assignment)
    np.testing.assert_array_equal(yinyang.centroids, lloyd.centroids)
    assert int(yinyang.iterations) == int(lloyd.iterations) > 10
    assert float(lloyd.distance_passes) == int(lloyd.iterations) + 1
    # The first pass is whole; the bounds must then spare a good share of the rest (a third to
    # two thirds on this data).
    assert 1.0 <= float(yinyang.distance_passes) < 0.7 * float(lloyd.distance_passes)


def _expanded_distances(x, c):
    """Squared distances as the float32 passes compute them (kmeans_seeding.nearest)."""
    x, c = jnp.asarray(x), jnp.asarray(c)
    return jnp.sum(x**2, axis=-1)[:, None] + (jnp.sum(c**2, axis=-1)[None, :] - 2.0 * (x @ c.T))


def _points_and_centroids(seed, n=400, d=512, k=24):
    # Far from the origin, where the expanded form cancels most digits.
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) + 3.0).astype(np.float32)
    # Centroids as k-means makes them: means of points.
    c = np.stack([x[rng.choice(n, 5, replace=False)].mean(axis=0) for _ in range(k)])
    return x, c.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_rounding_slack_bounds_the_expanded_distance_error(seed):
    x, c = _points_and_centroids(seed)
    exact = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    error = np.abs(np.asarray(_expanded_distances(x, c), np.float64) - exact)
    sqnorm = jnp.sum(jnp.asarray(x) ** 2, axis=-1)
    slack = np.asarray(kmeans_lloyd.rounding_slack(sqnorm, jnp.ones(len(x)), x.shape[1]))
    assert np.all(error <= slack[:, None])
    # Not vacuous: without its factor D the slack would be exceeded.
    assert np.any(error > slack[:, None] / x.shape[1])


def test_row_bounds_enclose_the_exact_distances():
    x, c = _points_and_centroids(2, k=10)  # 10 centroids in 3 groups of 4 (two padding slots)
    sqnorm = jnp.sum(jnp.asarray(x) ** 2, axis=-1)
    slack = kmeans_lloyd.rounding_slack(sqnorm, jnp.ones(len(x)), x.shape[1])
    idx, dist, upper, lower = kmeans_lloyd._rows_with_bounds(
        jnp.asarray(x), sqnorm, slack, jnp.asarray(c), groups=3, group_size=4)
    exact = np.sqrt(((x.astype(np.float64)[:, None] - c.astype(np.float64)[None]) ** 2).sum(-1))
    rows = np.arange(len(x))
    np.testing.assert_array_equal(idx, np.argmin(np.asarray(_expanded_distances(x, c)), axis=1))
    assert np.all(np.asarray(upper, np.float64) >= exact[rows, np.asarray(idx)])
    others = exact.copy()
    others[rows, np.asarray(idx)] = np.inf
    padded = np.concatenate([others, np.full((len(x), 2), np.inf)], axis=1)
    group_min = padded.reshape(len(x), 3, 4).min(axis=-1)
    assert np.all(np.asarray(lower, np.float64) <= group_min)
    # Tight enough to be of use: within a few slacks of the exact values.
    np.testing.assert_allclose(np.asarray(upper), exact[rows, np.asarray(idx)], rtol=1e-3)
    np.testing.assert_allclose(np.asarray(lower), group_min, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(dist), exact[rows, np.asarray(idx)] ** 2, rtol=1e-3)


def test_groups_cover_the_clusters_within_the_memory_cap():
    assert kmeans_lloyd.groups_of(1_000, 36_000) == (250, 4)
    assert kmeans_lloyd.groups_of(3, 100) == (1, 3)
    groups, size = kmeans_lloyd.groups_of(1_000, 1_000_000)
    assert groups * size >= 1_000 and (groups - 1) * size < 1_000
    assert groups * 1_000_000 <= kmeans_lloyd.MAX_BOUND_FLOATS
