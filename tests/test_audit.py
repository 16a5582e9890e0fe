"""The audit's figures against direct NumPy formulas."""

import numpy as np
import pytest

from cure_jax import audit
from cure_jax.metrics.retrieval import cluster_compactness, retrieval_metrics


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_search_quality_against_the_identity_most_found():
    found = np.array([4, 4, 4, 7])
    candidates = np.array([4] * 5 + [7] * 9 + [1] * 3)
    quality = audit.search_quality(found, candidates)
    assert quality.identity == 4
    assert quality.precision == pytest.approx(3 / 4)
    assert quality.recall == pytest.approx(3 / 5)
    assert (quality.others, quality.missed) == (1, 2)
    with pytest.raises(ValueError, match="nothing"):
        audit.search_quality(np.array([], int), candidates)


def test_photo_ranks_match_a_sorted_ranking():
    rng = np.random.default_rng(0)
    photos, train = _unit(rng.normal(size=(3, 8))), _unit(rng.normal(size=(40, 8)))
    positive = np.zeros(40, bool)
    positive[rng.choice(40, 6, replace=False)] = True
    ranks, aps = audit.photo_ranks(photos, train, positive)
    for p in range(3):
        order = np.argsort(-(train @ photos[p]))
        hits = positive[order]
        positions = np.flatnonzero(hits) + 1
        assert ranks[p] == positions[0]
        assert aps[p] == pytest.approx(np.mean(np.arange(1, 7) / positions))


def test_nearest_neighbours_are_the_most_similar_first():
    rng = np.random.default_rng(1)
    photos, train = _unit(rng.normal(size=(2, 8))), _unit(rng.normal(size=(30, 8)))
    expected = np.argsort(-(photos @ train.T), axis=1)[:, :5]
    np.testing.assert_array_equal(audit.nearest_neighbours(photos, train, 5), expected)


def test_compactness_is_the_one_identity_cluster_compactness():
    rng = np.random.default_rng(2)
    emb = _unit(rng.normal(size=(7, 8)))
    assert audit.compactness(emb) == pytest.approx(
        cluster_compactness(emb, np.zeros(7, int)), abs=1e-6)
    assert np.isnan(audit.compactness(emb[:1]))


def test_person_retrieval_matches_retrieval_metrics_per_person():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(6), 5)
    pool = _unit(rng.normal(size=(6, 8))[labels] + 0.7 * rng.normal(size=(30, 8)))
    measured = audit.person_retrieval(pool, labels, [1, 4])
    assert set(measured) == {1, 4}
    for person in (1, 4):
        expected = retrieval_metrics(pool, labels, query_mask_N=labels == person)
        assert measured[person] == pytest.approx((expected.map, expected.r1))
