"""GMM and DBSCAN forget clusters: what they find, and how DBSCAN's noise and cluster count are
fitted to CURE's fixed number of pseudo-label classes."""

import dataclasses

import jax
import numpy as np
import pytest

from cure_jax import host_clustering
from cure_jax.methods import cure


def _blobs(sizes, *, dim=16, noise=0.05, seed=0, outliers=0):
    """Unit points around len(sizes) random unit centres, plus `outliers` isolated points."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = [c + noise * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes, strict=True)]
    truth = np.repeat(np.arange(len(sizes)), sizes)
    if outliers:
        points.append(rng.normal(size=(outliers, dim)))
        truth = np.concatenate([truth, np.full(outliers, -1)])
    x = np.concatenate(points)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def _same_partition(a, b):
    """True when two labelings group the points identically (up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_gmm_finds_separated_clusters():
    x, truth = _blobs([30, 25, 40, 20])
    result = host_clustering.gmm_clusters(x, num_clusters=4, seed=0, num_restarts=2)
    assert result.centroids.shape == (4, 16) and result.kept == 4 and result.noise == 0
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, rtol=1e-5)
    assert _same_partition(result.assignment, truth)


def test_dbscan_joins_noise_to_the_nearest_cluster():
    x, truth = _blobs([30, 25, 40], outliers=3)
    result = host_clustering.dbscan_clusters(x, num_clusters=3, eps=0.05, min_samples=5)
    assert result.found == 3 and result.noise == 3
    real = truth >= 0
    assert _same_partition(result.assignment[real], truth[real])
    nearest = np.argmax(x[~real] @ result.centroids.T, axis=1)
    np.testing.assert_array_equal(result.assignment[~real], nearest)


def test_dbscan_keeps_the_largest_clusters_when_it_finds_more():
    x, truth = _blobs([30, 8, 40, 25])
    result = host_clustering.dbscan_clusters(x, num_clusters=3, eps=0.05, min_samples=5)
    assert result.found == 4 and result.kept == 3
    assert set(result.assignment.tolist()) == {0, 1, 2}
    # The smallest cluster's points joined a kept one: the kept three stay whole.
    kept = truth != 1
    assert _same_partition(result.assignment[kept], truth[kept])
    # Largest first.
    assert np.bincount(result.assignment[truth == 2]).argmax() == 0


def test_dbscan_repeats_rows_when_it_finds_fewer_and_never_assigns_them():
    x, _ = _blobs([30, 25])
    result = host_clustering.dbscan_clusters(x, num_clusters=5, eps=0.05, min_samples=5)
    assert result.found == 2 and result.kept == 2 and result.centroids.shape == (5, 16)
    np.testing.assert_array_equal(result.centroids[2:], result.centroids[[0, 1, 0]])
    assert result.assignment.max() < 2


def test_dbscan_with_only_noise_names_its_settings():
    x, _ = _blobs([3, 3, 3], noise=0.5)
    with pytest.raises(ValueError, match="cure.dbscan_eps"):
        host_clustering.dbscan_clusters(x, num_clusters=3, eps=1e-4, min_samples=5)


# k-means: tests/test_clustering.py and tests/test_cure_method.py.
@pytest.mark.parametrize("clustering", ["gmm", "dbscan"])
def test_cure_pseudo_labels_are_the_farthest_found_cluster(clustering):
    x, _ = _blobs([30, 25, 40])
    config = dataclasses.replace(cure.CureConfig(), clustering=clustering, forget_clusters=4,
                                 dbscan_eps=0.05, kmeans_restarts=2)
    centroids, nearest, labels = (np.asarray(a) for a in
                                  cure.cluster_forget(jax.random.key(0), x, config))
    assert centroids.shape == (4, 16) and nearest.shape == labels.shape == (len(x),)
    found = 3 if clustering == "dbscan" else 4
    assert labels.max() < found and nearest.max() < found  # never a repeated row
    # y~ = phi(l): the found centroid farthest from the point's own.
    distance = ((centroids[:found, None] - centroids[None, :found]) ** 2).sum(-1)
    np.fill_diagonal(distance, -np.inf)
    np.testing.assert_array_equal(labels, distance.argmax(axis=1)[nearest])


def test_a_dbscan_core_larger_than_the_forget_set_is_refused_before_training():
    from cure_jax import config as config_lib

    config = config_lib.apply_overrides(config_lib.Config(), ["cure.clustering=dbscan",
                                                              "cure.dbscan_min_samples=700"])
    with pytest.raises(ValueError, match="cure.dbscan_min_samples=700"):
        cure.check_request(config, 640, 5760)
    cure.check_request(config_lib.apply_overrides(config, ["cure.clustering=gmm"]), 640, 5760)
