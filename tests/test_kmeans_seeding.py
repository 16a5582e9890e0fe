"""Tests for cure_jax.kmeans_seeding: k-means|| against greedy k-means++, its cost, edges.

The k-means|| tests share one shape (N = 2,000, D = 32, K = 50), so that they share one
compilation per seeding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from cure_jax import clustering, kmeans_seeding

N, D, K = 2_000, 32, 50


def _inertia64(x, centroids, labels):
    diff = np.asarray(x, np.float64) - np.asarray(centroids, np.float64)[np.asarray(labels)]
    return float(np.sum(diff**2))


def _faces(seed, n=N, d=D, identities=K, noise=0.5):
    """Unit vectors around `identities` random unit centres, cosine to their centre about 0.9:
    the embeddings of a recognizer that separates identities well."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, identities, n)] + noise * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _mean_final_inertia(x, init, num_runs=8):
    runs = [
        clustering.kmeans(jax.random.key(s), x, num_clusters=K, num_iters=100, init=init)
        for s in range(num_runs)
    ]
    return float(np.mean([_inertia64(x, r.centroids, r.assignment) for r in runs]))


def test_parallel_seeding_keeps_kmeans_plus_plus_quality_on_face_like_data():
    # As many clusters as identities: a poor seeding leaves two centroids in one identity and
    # one across two, and Lloyd cannot move them apart.
    x = _faces(0)
    plus = _mean_final_inertia(x, "k-means++")
    assert _mean_final_inertia(x, "k-means||") <= 1.02 * plus
    # The bound tells seedings apart: random seeding's local optima are 10-25% worse here.
    assert _mean_final_inertia(x, "random") > 1.08 * plus


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parallel_seeding_puts_one_centroid_in_each_separated_blob(seed):
    x, y = make_blobs(240, n_features=4, centers=5, cluster_std=0.2, random_state=seed)
    x = x.astype(np.float32)
    seeds = np.asarray(clustering.kmeans_init(jax.random.key(seed), x, num_clusters=5,
                                              init="k-means||"))
    # Every seed is a point, and the five come from five different blobs (a random pick of five
    # points does that 4% of the time).
    nearest = ((seeds[:, None, :] - x[None]) ** 2).sum(-1).argmin(axis=1)
    np.testing.assert_allclose(seeds, x[nearest], atol=1e-5)
    assert sorted(y[nearest]) == [0, 1, 2, 3, 4]
    res = clustering.kmeans(jax.random.key(seed), x, num_clusters=5, init="k-means||")
    ref = clustering.kmeans(jax.random.key(seed), x, num_clusters=5, init="k-means++")
    assert adjusted_rand_score(y, np.asarray(res.assignment)) > 0.99
    np.testing.assert_allclose(float(res.inertia), float(ref.inertia), rtol=1e-4)


def _rows_multiplied(jaxpr, d, times=1):
    """Rows of [rows, d] left operands of matrix products, each loop body counted as often as
    it runs: how many points (or candidates) a program reads."""
    rows = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs = eqn.invars[0].aval.shape
            rows += times * lhs[0] if len(lhs) == 2 and lhs[1] == d else 0
        runs = times * eqn.params["length"] if eqn.primitive.name == "scan" else times
        for sub in jax_core.jaxprs_in_params(eqn.params):
            rows += _rows_multiplied(sub, d, runs)
    return rows


def _seeding_rows(init, n, d, k, *, chunk_size=4096):
    seeding = kmeans_seeding.settings(init, k, None, 3, 1.0)

    def seed(key, x_NxD):
        chunks = kmeans_seeding.to_chunks(x_NxD, chunk_size)
        return kmeans_seeding.seed(key, x_NxD, *chunks, num_clusters=k, seeding=seeding)

    # Traced only, never run: the cost model holds at any size.
    points = jax.ShapeDtypeStruct((n, d), jnp.float32)
    return _rows_multiplied(jax.make_jaxpr(seed)(jax.random.key(0), points).jaxpr, d)


@pytest.mark.parametrize("k", [50, 100])
def test_parallel_seeding_reads_the_points_once_per_round_not_once_per_centre(k):
    n, d, rounds = 3_000, 16, 3
    # Greedy k-means++: the first centre, then one pass over all N points per further centre.
    assert _seeding_rows("k-means++", n, d, k, chunk_size=1_000) == k * n
    # k-means||: the first candidate and one pass per round over the points, then greedy
    # k-means++ over the pool of Q = 1 + rounds * K weighted candidates, which reads the pool
    # once, for its Gram matrix (K passes over it without).
    pool = 1 + rounds * k
    assert _seeding_rows("k-means||", n, d, k, chunk_size=1_000) == (1 + rounds) * n + pool


def test_parallel_seeding_reads_an_eighth_of_kmeans_plus_plus_at_the_benchmark_size():
    n, d, k = 36_000, 512, 1_000  # docs/PERFORMANCE.md, k-means section
    plus, parallel = _seeding_rows("k-means++", n, d, k), _seeding_rows("k-means||", n, d, k)
    assert plus == k * n
    assert parallel < plus / 8  # 4 passes over the points and one over 3,001 candidates


@pytest.mark.parametrize("weighted", [False, True])
def test_greedy_seeding_through_the_gram_matrix_picks_the_same_centres(weighted):
    # k-means||'s recluster: a pool of 3K + 1 candidates, weighted by the points they stand for.
    x = jnp.asarray(_faces(2, n=301, d=64, identities=40))
    weight = jnp.asarray(np.random.default_rng(0).integers(1, 60, 301), jnp.float32)
    picks = [np.asarray(kmeans_seeding._kmeans_plus_plus(
        jax.random.key(7), x, jnp.sum(x**2, axis=-1), num_clusters=100, num_trials=6,
        weight_N=weight if weighted else None, gram=gram)) for gram in (False, True)]
    np.testing.assert_array_equal(picks[0], picks[1])
    assert len({row.tobytes() for row in picks[1]}) == 100  # 100 distinct points


def test_the_recluster_tries_four_times_the_candidates_of_greedy_kmeans_plus_plus():
    # Each candidate of greedy k-means++ on the data costs a pass over the points; in k-means||'s
    # recluster, a read of its small pool.
    for k, greedy in ((100, 6), (1_000, 8)):
        assert kmeans_seeding.settings("k-means++", k, None, 3, 1.0).num_trials == greedy
        assert kmeans_seeding.settings("k-means||", k, None, 3, 1.0).num_trials == 4 * greedy
        # A number given is used as it is, by both.
        for init in ("k-means++", "k-means||"):
            assert kmeans_seeding.settings(init, k, 5, 3, 1.0).num_trials == 5


def test_seeding_is_deterministic_for_a_key():
    x = _faces(1)
    key = jax.random.key(3)
    for init in ("k-means++", "k-means||"):
        a = np.asarray(clustering.kmeans_init(key, x, num_clusters=K, init=init))
        np.testing.assert_array_equal(a, clustering.kmeans_init(key, x, num_clusters=K, init=init))
        other = clustering.kmeans_init(jax.random.key(4), x, num_clusters=K, init=init)
        assert not np.array_equal(a, other)
        # Distinct points of the data.
        nearest = ((a[:, None, :] - x[None]) ** 2).sum(-1).argmin(axis=1)
        np.testing.assert_allclose(a, x[nearest], atol=1e-6)
        assert len(set(nearest.tolist())) == K
        run, again = (
            clustering.kmeans(key, x, num_clusters=K, num_iters=100, init=init) for _ in range(2)
        )
        np.testing.assert_array_equal(run.centroids, again.centroids)
        np.testing.assert_array_equal(run.assignment, again.assignment)


@pytest.mark.parametrize("init", ["k-means++", "k-means||", "random"])
def test_kmeans_starts_from_kmeans_init(init):
    x, _ = make_blobs(300, n_features=5, centers=6, cluster_std=2.5, random_state=3)
    x = x.astype(np.float32)
    key = jax.random.key(5)
    seeds = np.asarray(clustering.kmeans_init(key, x, num_clusters=6, init=init))
    one = clustering.kmeans(key, x, num_clusters=6, num_iters=1, init=init)
    # One Lloyd update from the seeds: the mean of each seed's points.
    labels = ((x[:, None, :] - seeds[None]) ** 2).sum(-1).argmin(axis=1)
    assert len(np.unique(labels)) == 6  # no empty cluster, so no reseeding
    means = np.stack([x[labels == k].mean(axis=0) for k in range(6)])
    np.testing.assert_allclose(one.centroids, means, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parallel_seeding_with_duplicate_points_picks_each_distinct_point(seed):
    # 10 distinct points, 4 copies each: a copy of a candidate is at distance 0, so it is never
    # drawn again and weighs nothing; the 10 seeds are the 10 distinct points.
    distinct = np.random.default_rng(seed).normal(size=(10, 3)).astype(np.float32)
    x = np.repeat(distinct, 4, axis=0)
    seeds = np.asarray(clustering.kmeans_init(jax.random.key(seed), x, num_clusters=10,
                                              init="k-means||"))
    nearest = ((seeds[:, None, :] - distinct[None]) ** 2).sum(-1).argmin(axis=1)
    assert sorted(nearest.tolist()) == list(range(10))
    res = clustering.kmeans(jax.random.key(seed), x, num_clusters=10, init="k-means||")
    assert float(res.inertia) < 1e-4 and int(res.iterations) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(parallel_rounds=0), "parallel_rounds must be >= 1"),
        (dict(oversampling=0.0), "oversampling must be > 0"),
        (dict(oversampling=float("nan")), "oversampling must be > 0"),
        (dict(parallel_rounds=1, oversampling=0.5), "fewer candidates than clusters"),
        (dict(num_local_trials=0), "num_local_trials must be >= 1"),
    ],
)
def test_bad_parallel_settings_are_refused_before_tracing(kwargs, match):
    x = np.zeros((8, 2), np.float32)
    for fn in (clustering.kmeans, clustering.kmeans_init):
        with pytest.raises(ValueError, match=match):
            fn(jax.random.key(0), x, num_clusters=4, init="k-means||", **kwargs)


def test_parallel_settings_compile_once():
    rng = np.random.default_rng(0)
    before = clustering._kmeans_jit._cache_size()
    for i in range(3):
        x = rng.normal(size=(64, 3)).astype(np.float32)
        clustering.kmeans(jax.random.key(i), x, num_clusters=3, num_iters=6, init="k-means||",
                          tol=0.01 * i)
    assert clustering._kmeans_jit._cache_size() - before == 1
    # The k-means|| settings mean nothing to the other seedings: no new program.
    for init in ("k-means++", "random"):
        for rounds in (2, 5):
            clustering.kmeans(jax.random.key(0), x, num_clusters=3, num_iters=6, init=init,
                              parallel_rounds=rounds, oversampling=2.0 / rounds)
    assert clustering._kmeans_jit._cache_size() - before == 3


def test_chunks_hold_the_points_their_squared_norms_and_which_are_padding():
    x = np.random.default_rng(0).standard_normal((103, 7)).astype(np.float32)  # 103: prime
    points_MxCxD, sqnorm_MxC, valid_P = kmeans_seeding.to_chunks(jnp.asarray(x), 10)
    assert points_MxCxD.shape == (11, 10, 7) and sqnorm_MxC.shape == (11, 10)
    np.testing.assert_array_equal(points_MxCxD.reshape(-1, 7)[:103], x)
    np.testing.assert_array_equal(points_MxCxD.reshape(-1, 7)[103:], 0.0)
    np.testing.assert_allclose(sqnorm_MxC.reshape(-1)[:103], np.sum(x**2, axis=-1), rtol=1e-6)
    np.testing.assert_array_equal(sqnorm_MxC.reshape(-1)[103:], 0.0)
    np.testing.assert_array_equal(valid_P, np.arange(110) < 103)


def test_chunk_sums_apply_a_reduction_to_each_chunk_of_several_arrays():
    a_MxCxD = jnp.arange(24.0).reshape(2, 3, 4)
    w_MxC = jnp.asarray([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])

    def weighted_sum(a_CxD, w_C):
        return jnp.sum(w_C * jnp.sum(a_CxD, axis=-1))

    sums_M = kmeans_seeding.chunk_sums(weighted_sum, a_MxCxD, w_MxC)
    np.testing.assert_array_equal(sums_M, np.sum(w_MxC * np.sum(a_MxCxD, axis=-1), axis=-1))
