"""Tests for cure_jax.metrics.retrieval against brute-force NumPy and scikit-learn references."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cure_jax.metrics.retrieval import (
    cluster_compactness,
    per_identity_compactness,
    per_query_retrieval,
    retrieval_metrics,
)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random_pool(seed, num, dim=8, num_ids=30):
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(num, dim))), rng.integers(0, num_ids, num)


def _reference_ranks(emb, labels, query_mask=None):
    """Per query: (index, best rank, AP) by the documented tie rule, pair by pair, in float64."""
    scores = np.asarray(emb, np.float64) @ np.asarray(emb, np.float64).T
    mask = np.ones(len(labels), bool) if query_mask is None else query_mask
    out = []
    for q in np.flatnonzero(mask):
        s = np.delete(scores[q], q)
        pos = np.delete(labels == labels[q], q)
        if not pos.any():
            continue
        pos_s = s[pos]
        rank = 1 + np.sum(s[None, :] > pos_s[:, None], axis=1)
        above = 1 + np.sum(pos_s[None, :] > pos_s[:, None], axis=1)
        out.append((q, rank.min(), np.mean(above / rank)))
    return out


def _argsort_ranks(emb, labels):
    """Per query: (index, best rank, AP) from a full descending sort (no-tie data only)."""
    scores = np.asarray(emb, np.float64) @ np.asarray(emb, np.float64).T
    out = []
    for q in range(len(labels)):
        s = np.delete(scores[q], q)
        pos = np.delete(labels == labels[q], q)
        if not pos.any():
            continue
        hit_ranks = 1 + np.flatnonzero(pos[np.argsort(-s)])
        out.append((q, hit_ranks[0], np.mean(np.arange(1, hit_ranks.size + 1) / hit_ranks)))
    return out


def _check_against(ref, query, first, ap):
    ref_q, ref_first, ref_ap = (np.array(c) for c in zip(*ref, strict=True))
    np.testing.assert_array_equal(query, ref_q)
    np.testing.assert_array_equal(first, ref_first)
    np.testing.assert_allclose(ap, ref_ap, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed,num,block_size", [(0, 150, 1024), (1, 97, 16), (2, 64, 5)])
def test_matches_argsort_reference(seed, num, block_size):
    emb, labels = _random_pool(seed, num)
    query, first, ap = per_query_retrieval(emb, labels, block_size=block_size)
    _check_against(_argsort_ranks(emb, labels), query, first, ap)

    res = retrieval_metrics(emb, labels, block_size=block_size, max_rank=7)
    ref_first = np.array([r[1] for r in _argsort_ranks(emb, labels)])
    np.testing.assert_allclose(res.cmc, [np.mean(ref_first <= k) for k in range(1, 8)])
    assert res.r1 == pytest.approx(np.mean(ref_first <= 1))
    assert res.r5 == pytest.approx(np.mean(ref_first <= 5))
    assert res.map == pytest.approx(np.mean([r[2] for r in _argsort_ranks(emb, labels)]), abs=1e-6)
    assert res.num_queries == ref_first.size
    assert res.cmc.shape == (7,)


def test_matches_sklearn_average_precision():
    emb, labels = _random_pool(3, 120, num_ids=12)
    query, _, ap = per_query_retrieval(emb, labels, block_size=32)
    scores = emb.astype(np.float64) @ emb.astype(np.float64).T
    for q, ap_q in zip(query, ap, strict=True):
        keep = np.arange(len(labels)) != q
        expected = average_precision_score(labels[keep] == labels[q], scores[q, keep])
        assert ap_q == pytest.approx(expected, abs=1e-6)


def test_ties_follow_the_documented_rule():
    # Small-integer embeddings give exact dot products with many ties.
    rng = np.random.default_rng(4)
    emb = rng.integers(-1, 2, size=(80, 3)).astype(np.float32)
    labels = rng.integers(0, 6, 80)
    query, first, ap = per_query_retrieval(emb, labels, block_size=16)
    _check_against(_reference_ranks(emb, labels), query, first, ap)
    # The rule is optimistic: with every score tied, every positive has rank 1.
    _, first, ap = per_query_retrieval(np.ones((6, 2), np.float32), np.array([0, 0, 0, 1, 1, 2]))
    np.testing.assert_array_equal(first, 1)
    np.testing.assert_allclose(ap, 1.0)


def test_large_identity_uses_several_positive_chunks():
    # 70 images of one identity: 69 positives per query, more than one chunk of positives.
    rng = np.random.default_rng(5)
    labels = np.concatenate([np.zeros(70, int), rng.integers(1, 20, 90)])
    emb = _unit(rng.normal(size=(160, 6)) + 0.8 * (labels == 0)[:, None])
    query, first, ap = per_query_retrieval(emb, labels, block_size=64)
    _check_against(_reference_ranks(emb, labels), query, first, ap)


def test_query_mask_and_queries_without_positives():
    emb, labels = _random_pool(6, 100)
    labels[:5] = 1000 + np.arange(5)  # singletons: no positive, never a query
    mask = np.zeros(100, bool)
    mask[::3] = True
    query, first, ap = per_query_retrieval(emb, labels, query_mask_N=mask, block_size=8)
    _check_against(_reference_ranks(emb, labels, mask), query, first, ap)
    assert not np.isin(query, np.arange(5)).any()
    assert np.all(mask[query])
    res = retrieval_metrics(emb, labels, query_mask_N=mask)
    assert res.num_queries == np.sum(mask[5:] & (np.bincount(labels)[labels][5:] > 1))
    # Masked-out images stay in the pool: they are still retrieved.
    assert res.map != retrieval_metrics(emb[mask], labels[mask]).map


def test_block_size_does_not_change_results():
    emb, labels = _random_pool(7, 133, num_ids=20)
    ref = per_query_retrieval(emb, labels, block_size=1024)
    for block_size in (1, 7, 32, 133):
        out = per_query_retrieval(emb, labels, block_size=block_size)
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_array_equal(a, b)


def test_perfect_and_hopeless_retrieval():
    # Two orthogonal identities: every positive ranks above every negative.
    emb = np.repeat(np.eye(2, 4, dtype=np.float32), 5, axis=0)
    emb = _unit(emb + 0.01 * np.random.default_rng(8).normal(size=emb.shape))
    labels = np.repeat([0, 1], 5)
    res = retrieval_metrics(emb, labels)
    assert res.r1 == 1.0 and res.r5 == 1.0 and res.map == pytest.approx(1.0)
    np.testing.assert_array_equal(res.cmc, 1.0)
    # Positives pushed opposite to the query: they rank last.
    emb = np.array([[1, 0], [-1, 0], [0.9, 0.1], [0.8, 0.2]], np.float32)
    res = retrieval_metrics(_unit(emb), np.array([0, 0, 1, 2]), query_mask_N=np.array(
        [True, False, False, False]))
    assert res.r1 == 0.0 and res.num_queries == 1
    assert res.map == pytest.approx(1 / 3)
    np.testing.assert_array_equal(res.cmc[:3], [0, 0, 1])


def test_errors():
    emb, labels = _random_pool(9, 20)
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(emb, np.arange(20))
    with pytest.raises(ValueError):
        retrieval_metrics(emb, labels[:-1])
    with pytest.raises(ValueError):
        retrieval_metrics(emb, labels, query_mask_N=np.ones(19, bool))
    with pytest.raises(ValueError):
        retrieval_metrics(emb, labels, max_rank=0)


def _brute_compactness(emb, labels):
    values = {}
    for ident in np.unique(labels):
        z = emb[labels == ident].astype(np.float64)
        if len(z) < 2:
            continue
        cos = z @ z.T
        values[ident] = (cos.sum() - np.trace(cos)) / (len(z) * (len(z) - 1))
    return values


def test_cluster_compactness_matches_pairwise_mean():
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 15, 200)
    emb = _unit(rng.normal(size=(200, 16)) + rng.normal(size=(15, 16))[labels])
    labels[0] = 99  # a singleton: excluded
    expected = _brute_compactness(emb, labels)
    ids, values, counts = per_identity_compactness(emb, labels)
    np.testing.assert_array_equal(ids, sorted(expected))
    np.testing.assert_allclose(values, [expected[i] for i in ids], atol=1e-5)
    np.testing.assert_array_equal(counts, [np.sum(labels == i) for i in ids])
    assert cluster_compactness(emb, labels) == pytest.approx(
        np.mean(list(expected.values())), abs=1e-5)

    keep = np.isin(labels, [1, 2, 3])
    sub = _brute_compactness(emb[keep], labels[keep])
    assert cluster_compactness(emb, labels, label_mask=keep) == pytest.approx(
        np.mean(list(sub.values())), abs=1e-5)


def test_cluster_compactness_extremes_and_errors():
    emb = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
    labels = np.repeat([0, 1, 2], 4)
    assert cluster_compactness(emb, labels) == pytest.approx(1.0)
    # Antipodal pairs: mean pairwise cosine -1.
    emb = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)
    assert cluster_compactness(emb, np.array([0, 0, 1, 1])) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="two or more"):
        cluster_compactness(emb, np.arange(4))
