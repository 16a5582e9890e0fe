"""Tests for cure_jax.clustering: k-means against scikit-learn and NumPy, invariances, edges."""

import chex
import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from cure_jax import clustering

# Most tests share these sizes, so that they share one compilation.
K = 8
ITERS = 100


def _inertia64(x, centroids, labels):
    diff = np.asarray(x, np.float64) - np.asarray(centroids, np.float64)[np.asarray(labels)]
    return float(np.sum(diff**2))


def _mixture(seed, n=300, d=5, k=6):
    """Overlapping Gaussian mixture: several local optima, so seeding quality shows."""
    x, _ = make_blobs(n, n_features=d, centers=k, cluster_std=2.5, random_state=seed)
    return x.astype(np.float32)


def _blobs(seed, n=240, k=5):
    x, y = make_blobs(n, n_features=4, centers=k, cluster_std=0.2, random_state=seed)
    return x.astype(np.float32), y


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_best_inertia_within_one_percent_of_sklearn(seed):
    # Single runs spread by ~2% on this data, so compare the best of 10 restarts on each side.
    x = _mixture(seed)
    ours = clustering.kmeans(
        jax.random.key(seed), x, num_clusters=K, num_iters=ITERS, num_restarts=10
    )
    ref = KMeans(K, n_init=10, max_iter=ITERS, random_state=seed).fit(x)
    ours_inertia = _inertia64(x, ours.centroids, ours.assignment)
    assert ours_inertia <= 1.01 * _inertia64(x, ref.cluster_centers_, ref.labels_)
    # The reported inertia is the same quantity, computed on device in float32.
    np.testing.assert_allclose(float(ours.inertia), ours_inertia, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_single_run_inertia_matches_sklearn(seed):
    # The mean over 32 single runs measures the seeding itself (standard error ~0.2% here).
    x = _mixture(seed)
    keys = jax.random.split(jax.random.key(seed), 32)
    ours = jax.vmap(lambda k: clustering.kmeans(k, x, num_clusters=K, num_iters=ITERS).inertia)
    ref = [KMeans(K, n_init=1, max_iter=ITERS, random_state=s).fit(x).inertia_ for s in range(32)]
    assert float(np.mean(ours(keys))) <= 1.01 * float(np.mean(ref))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_well_separated_blobs_recovered(seed):
    x, y = _blobs(seed)
    res = clustering.kmeans(jax.random.key(seed), x, num_clusters=5, num_iters=ITERS)
    assert adjusted_rand_score(y, np.asarray(res.assignment)) > 0.99
    ref = KMeans(5, n_init=1, random_state=seed).fit(x)
    assert adjusted_rand_score(ref.labels_, np.asarray(res.assignment)) > 0.99


@pytest.mark.parametrize("algorithm", ["lloyd", "yinyang"])
def test_result_types_and_fixed_point(algorithm):
    x = _mixture(4)
    res = clustering.kmeans(jax.random.key(0), x, num_clusters=K, num_iters=ITERS,
                            algorithm=algorithm)
    assert res.centroids.shape == (K, 5)
    assert res.assignment.shape == (300,) and res.assignment.dtype == np.int32
    assert res.inertia.shape == () and res.iterations.dtype == np.int32
    assert 1 <= int(res.iterations) < ITERS  # settled before the cap
    assert res.distance_passes.dtype == np.float32
    if algorithm == "lloyd":
        assert float(res.distance_passes) == int(res.iterations) + 1
    # Converged Lloyd: every point is with its nearest centroid, every centroid is its mean.
    np.testing.assert_array_equal(clustering.assign(x, res.centroids), res.assignment)
    labels = np.asarray(res.assignment)
    means = np.stack([x[labels == k].mean(axis=0) for k in range(K)])
    np.testing.assert_allclose(res.centroids, means, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["lloyd", "yinyang"])
def test_assignment_belongs_to_returned_centroids_when_capped(algorithm):
    x = _mixture(5)
    for num_iters in (1, 2):
        res = clustering.kmeans(jax.random.key(1), x, num_clusters=K, num_iters=num_iters,
                                algorithm=algorithm)
        assert int(res.iterations) == num_iters
        np.testing.assert_array_equal(clustering.assign(x, res.centroids), res.assignment)
        np.testing.assert_allclose(
            float(res.inertia), _inertia64(x, res.centroids, res.assignment), rtol=1e-5
        )


@pytest.mark.parametrize("algorithm", ["lloyd", "yinyang"])
def test_tol_stops_early(algorithm):
    x = _mixture(6)
    kwargs = dict(num_clusters=K, num_iters=ITERS, algorithm=algorithm)
    full = clustering.kmeans(jax.random.key(2), x, tol=0.0, **kwargs)
    loose = clustering.kmeans(jax.random.key(2), x, tol=0.05, **kwargs)
    assert int(loose.iterations) < int(full.iterations)
    assert float(full.inertia) <= float(loose.inertia) * (1 + 1e-6)


def test_permuting_points_keeps_inertia():
    x, _ = _blobs(7)
    perm = np.random.default_rng(0).permutation(len(x))
    a = clustering.kmeans(jax.random.key(0), x, num_clusters=5, num_iters=ITERS)
    b = clustering.kmeans(jax.random.key(0), x[perm], num_clusters=5, num_iters=ITERS)
    # The same partition up to the cluster ids (so the same inertia, up to float32 rounding).
    assert adjusted_rand_score(np.asarray(a.assignment)[perm], np.asarray(b.assignment)) == 1.0
    np.testing.assert_allclose(
        _inertia64(x, a.centroids, a.assignment),
        _inertia64(x[perm], b.centroids, b.assignment),
        rtol=1e-6,
    )
    np.testing.assert_allclose(float(a.inertia), float(b.inertia), rtol=1e-5)


@pytest.mark.parametrize(("init", "algorithm"),
                         [("k-means++", "lloyd"), ("k-means||", "lloyd"), ("k-means++", "yinyang")])
@pytest.mark.parametrize("cosine", [False, True])
def test_chunked_equals_unchunked(cosine, init, algorithm):
    x = _mixture(8, n=103)  # 103 is prime: every chunk size below it needs padding
    kwargs = dict(num_clusters=7, num_iters=30, num_restarts=2, cosine=cosine, init=init,
                  algorithm=algorithm)
    whole = clustering.kmeans(jax.random.key(3), x, chunk_size=4096, **kwargs)
    chunked = clustering.kmeans(jax.random.key(3), x, chunk_size=10, **kwargs)
    np.testing.assert_array_equal(chunked.assignment, whole.assignment)
    np.testing.assert_allclose(chunked.centroids, whole.centroids, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.inertia, whole.inertia, rtol=1e-5)
    assert int(chunked.iterations) == int(whole.iterations)


@pytest.mark.parametrize("algorithm", ["lloyd", "yinyang"])
def test_restarts_keep_the_best_run(algorithm):
    x = _mixture(9)
    key = jax.random.key(4)
    kwargs = dict(num_clusters=K, num_iters=ITERS, algorithm=algorithm)
    best = clustering.kmeans(key, x, num_restarts=4, **kwargs)
    singles = [clustering.kmeans(k, x, **kwargs) for k in jax.random.split(key, 4)]
    i = int(np.argmin([float(s.inertia) for s in singles]))
    np.testing.assert_allclose(best.inertia, singles[i].inertia, rtol=1e-6)
    np.testing.assert_array_equal(best.assignment, singles[i].assignment)


@pytest.mark.parametrize("algorithm", ["lloyd", "yinyang"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_empty_clusters_reseeded_with_duplicate_points(seed, algorithm):
    # 10 distinct points, 4 copies each: random seeding almost surely picks copies of one point,
    # whose clusters start empty; re-seeding must still reach all 10 and zero inertia.
    distinct = np.random.default_rng(seed).normal(size=(10, 3)).astype(np.float32)
    x = np.repeat(distinct, 4, axis=0)
    res = clustering.kmeans(
        jax.random.key(seed), x, num_clusters=10, num_iters=ITERS, init="random",
        algorithm=algorithm,
    )
    assert np.all(np.isfinite(res.centroids))
    assert len(np.unique(np.asarray(res.assignment))) == 10
    assert float(res.inertia) < 1e-4


@pytest.mark.parametrize("init", ["k-means++", "k-means||"])
def test_single_cluster_is_the_mean(init):
    x = _mixture(11)
    res = clustering.kmeans(jax.random.key(0), x, num_clusters=1, init=init)
    np.testing.assert_allclose(res.centroids[0], x.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(res.assignment, np.zeros(len(x)))
    assert int(res.iterations) == 1
    np.testing.assert_array_equal(clustering.farthest_cluster_map(res.centroids), [0])


@pytest.mark.parametrize("init", ["k-means++", "k-means||", "random"])
def test_as_many_clusters_as_points(init):
    x = np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32)
    res = clustering.kmeans(jax.random.key(0), x, num_clusters=12, num_iters=20, init=init)
    assert np.all(np.isfinite(res.centroids))
    assert len(np.unique(np.asarray(res.assignment))) == 12
    assert float(res.inertia) < 1e-4


@pytest.mark.parametrize(("init", "algorithm"),
                         [("k-means++", "lloyd"), ("k-means||", "lloyd"), ("k-means++", "yinyang")])
def test_more_clusters_than_distinct_points_gives_no_nan(init, algorithm):
    x = np.repeat(np.eye(3, dtype=np.float32), 3, axis=0)  # 3 distinct points, K = 5
    for cosine in (False, True):
        res = clustering.kmeans(jax.random.key(0), x, num_clusters=5, cosine=cosine, init=init,
                                algorithm=algorithm)
        assert np.all(np.isfinite(res.centroids)) and np.isfinite(float(res.inertia))
        assert len(np.unique(np.asarray(res.assignment))) == 3


def test_cosine_mode_unit_centroids_and_scale_invariance():
    x = _mixture(10)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(x), 1)).astype(np.float32)
    kwargs = dict(num_clusters=K, num_iters=ITERS, cosine=True)
    a = clustering.kmeans(jax.random.key(5), x, **kwargs)
    b = clustering.kmeans(jax.random.key(5), x * scale, **kwargs)
    np.testing.assert_allclose(np.linalg.norm(a.centroids, axis=1), 1.0, rtol=1e-5)
    # Only directions matter, and the inertia is that of the unit points.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_allclose(
        float(a.inertia), _inertia64(unit, a.centroids, a.assignment), rtol=1e-5
    )
    np.testing.assert_array_equal(clustering.assign(unit, a.centroids), a.assignment)


def _farthest_numpy(c):
    c = np.asarray(c, np.float64)
    d = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, -np.inf)
    return d.argmax(axis=1)


@pytest.mark.parametrize("k", [2, 3, 17])
def test_farthest_cluster_map_against_numpy(k):
    c = np.random.default_rng(k).normal(size=(k, 8)).astype(np.float32)
    phi = np.asarray(clustering.farthest_cluster_map(c))
    assert phi.dtype == np.int32
    np.testing.assert_array_equal(phi, _farthest_numpy(c))
    assert np.all(phi != np.arange(k))


def test_farthest_cluster_map_never_maps_to_itself():
    c = np.zeros((4, 3), np.float32)  # all centroids equal: every distance ties at zero
    assert np.all(np.asarray(clustering.farthest_cluster_map(c)) != np.arange(4))
    c = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(clustering.farthest_cluster_map(c), [2, 2, 0])
    np.testing.assert_array_equal(clustering.farthest_cluster_map(c[:1]), [0])


@pytest.mark.parametrize("chunk_size", [7, 4096])
def test_assign_and_pseudo_labels_against_numpy(chunk_size):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    c = rng.normal(size=(9, 6)).astype(np.float32)
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    labels = np.asarray(clustering.assign(x, c, chunk_size=chunk_size))
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, d.argmin(axis=1))
    nearest, pseudo = clustering.pseudo_labels(x, c, chunk_size=chunk_size)
    np.testing.assert_array_equal(nearest, d.argmin(axis=1))
    np.testing.assert_array_equal(pseudo, _farthest_numpy(c)[d.argmin(1)])


def test_errors_raised_before_tracing():
    x = np.zeros((4, 2), np.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="more clusters than points: K=5, N=4"):
        clustering.kmeans(key, x, num_clusters=5)
    with pytest.raises(ValueError, match="num_clusters"):
        clustering.kmeans(key, x, num_clusters=0)
    with pytest.raises(ValueError, match="2-D"):
        clustering.kmeans(key, np.zeros(4, np.float32), num_clusters=1)
    with pytest.raises(ValueError, match="2-D"):
        clustering.kmeans(key, np.zeros((2, 2, 2), np.float32), num_clusters=1)
    with pytest.raises(ValueError, match="num_iters"):
        clustering.kmeans(key, x, num_clusters=2, num_iters=0)
    with pytest.raises(ValueError, match="init"):
        clustering.kmeans(key, x, num_clusters=2, init="kmeans++")
    with pytest.raises(ValueError, match=r"algorithm must be one of \('lloyd', 'yinyang'\)"):
        clustering.kmeans(key, x, num_clusters=2, algorithm="elkan")
    with pytest.raises(ValueError, match="init"):
        clustering.kmeans_init(key, x, num_clusters=2, init="kmeans||")
    with pytest.raises(ValueError, match="more clusters than points"):
        clustering.kmeans_init(key, x, num_clusters=5, init="k-means||")
    with pytest.raises(ValueError, match="feature sizes"):
        clustering.assign(x, np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        clustering.pseudo_labels(x[0], x)


def test_compiles_once_for_repeated_shapes():
    rng = np.random.default_rng(0)
    before = clustering._kmeans_jit._cache_size()
    for i, tol in enumerate((0.0, 1e-3, 1e-2)):
        x = rng.normal(size=(64, 3)).astype(np.float32)
        clustering.kmeans(jax.random.key(i), x, num_clusters=3, num_iters=7, tol=tol)
    # tol is traced, data and key change: one compilation for the three calls.
    assert clustering._kmeans_jit._cache_size() - before == 1

    # The public function is jittable, and a caller's jit traces it once.
    @jax.jit
    @chex.assert_max_traces(n=1)
    def jitted(key, points):
        return clustering.kmeans(key, points, num_clusters=3, num_iters=7)

    for i in range(3):
        res = jitted(jax.random.key(i), rng.normal(size=(64, 3)).astype(np.float32))
        assert np.isfinite(float(res.inertia))
