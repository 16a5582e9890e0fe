"""Tests for cure_jax.metrics.verification against a direct re-implementation of insightface."""

import numpy as np
import pytest
from scipy.interpolate import BSpline
from sklearn.model_selection import KFold

from cure_jax.metrics.verification import (
    VerificationResult,
    pair_distances,
    verify,
)


def _old_slinear(x, y, x_new):
    # interp1d(kind="slinear") of SciPy <= 1.9: a degree-1 B-spline on knots [x0, x..., x_last];
    # current SciPy refuses the repeated x that every FAR curve has, BSpline still evaluates it.
    return float(BSpline.construct_fast(np.r_[x[0], x, x[-1]], np.asarray(y, float), 1)(x_new))


def _insightface_verify(dist, issame, num_folds=10, far_target=1e-3):
    """The loops of insightface's calculate_roc and calculate_val, one threshold at a time."""
    issame = np.asarray(issame, bool)
    acc_thr = np.arange(0, 4, 0.01)
    tar_thr = np.arange(0, 4, 0.001)

    def rates(threshold, d, same):
        pred = np.less(d, threshold)
        tp = np.sum(pred & same)
        fp = np.sum(pred & ~same)
        tn = np.sum(~pred & ~same)
        return float(tp + tn) / d.size, float(tp) / float(np.sum(same)), float(fp) / float(
            np.sum(~same))

    accuracy, best, val, far = [], [], [], []
    for train, test in KFold(n_splits=num_folds, shuffle=False).split(np.arange(dist.size)):
        acc_train = [rates(t, dist[train], issame[train])[0] for t in acc_thr]
        best.append(acc_thr[np.argmax(acc_train)])
        accuracy.append(rates(best[-1], dist[test], issame[test])[0])
        far_train = np.array([rates(t, dist[train], issame[train])[2] for t in tar_thr])
        if np.max(far_train) >= far_target:
            threshold = _old_slinear(far_train, tar_thr, far_target)
        else:
            threshold = 0.0
        _, v, f = rates(threshold, dist[test], issame[test])
        val.append(v)
        far.append(f)
    return VerificationResult(float(np.mean(accuracy)), float(np.std(accuracy)),
                              float(np.mean(best)), float(np.mean(val)), float(np.mean(far)),
                              int(dist.size))


def _realistic_pairs(rng, num_pairs, sep=0.8):
    issame = rng.random(num_pairs) < 0.5
    dist = np.where(issame, rng.normal(1.0, 0.3, num_pairs), rng.normal(1.0 + sep, 0.3, num_pairs))
    return np.clip(dist, 0.0, 3.9999), issame


def test_perfect_separation():
    rng = np.random.default_rng(0)
    issame = np.arange(600) % 2 == 0
    dist = np.where(issame, rng.uniform(0.0, 1.0, 600), rng.uniform(2.0, 4.0, 600))
    res = verify(dist, issame)
    assert res.accuracy == 1.0
    assert res.accuracy_std == 0.0
    assert res.tar_at_far == 1.0
    assert res.num_pairs == 600
    assert 1.0 <= res.threshold <= 2.0


def test_random_distances_give_chance_accuracy():
    rng = np.random.default_rng(1)
    dist = rng.uniform(0, 4, 6000)
    issame = rng.random(6000) < 0.5
    res = verify(dist, issame)
    assert abs(res.accuracy - 0.5) < 0.03
    # With no signal the TAR at a FAR of 1e-3 is about that FAR.
    assert res.tar_at_far < 0.02


def test_hand_checked_two_folds():
    # Fold 0 = pairs 0, 1; fold 1 = pairs 2, 3.
    dist = np.array([0.3, 1.0, 0.5, 2.0])
    issame = np.array([True, False, True, False])
    res = verify(dist, issame, num_folds=2, far_target=0.5)
    # Held-out fold 0: trained on (0.5 same, 2.0 diff), first best threshold 0.51 -> both right.
    # Held-out fold 1: trained on (0.3 same, 1.0 diff), threshold 0.31 rejects the 0.5 same pair.
    assert res.accuracy == pytest.approx(0.75)
    assert res.accuracy_std == pytest.approx(0.25)
    assert res.threshold == pytest.approx((0.51 + 0.31) / 2)
    # FAR on the training fold jumps 0 -> 1 between thresholds 2.000 and 2.001 (fold 0) and
    # 1.000 and 1.001 (fold 1): the interpolated thresholds 2.0005 and 1.0005 accept every pair
    # of held-out fold 0 and only the same pair of held-out fold 1.
    assert res.tar_at_far == pytest.approx(1.0)
    assert res.far == pytest.approx(0.5)


def test_distance_equal_to_threshold_is_rejected():
    grid = np.arange(0, 4, 0.01)
    # Held-out fold 1 meets threshold grid[31] (first best on (0.3 same, 1.0 diff)) with a same
    # pair at exactly that distance: "same" needs dist < threshold, so it is rejected.
    dist = np.array([0.3, 1.0, grid[31], 2.0])
    issame = np.array([True, False, True, False])
    res = verify(dist, issame, num_folds=2)
    assert res.accuracy == pytest.approx(0.75)
    assert res == _insightface_verify(dist, issame, num_folds=2)


def test_far_plateau_interpolates_from_its_last_point():
    # Training FAR stays at 0.5 over a whole range of thresholds; the protocol's slinear
    # interpolation at 0.5 lands on the LAST threshold of the plateau, just below the next
    # different pair: 3.0 for held-out fold 0 (trained on diffs 1.5, 3.0) and 2.0 for fold 1.
    dist = np.array([0.2, 1.0, 2.0, 0.3, 1.5, 3.0])
    issame = np.array([True, False, False, True, False, False])
    res = verify(dist, issame, num_folds=2, far_target=0.5)
    assert res.tar_at_far == pytest.approx(1.0)
    assert res.far == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert res == _insightface_verify(dist, issame, num_folds=2, far_target=0.5)


@pytest.mark.parametrize("num_pairs,num_folds,seed,sep", [
    (600, 10, 0, 0.8),
    (1003, 10, 1, 0.8),  # uneven folds: KFold gives the remainder to the first folds
    (700, 7, 2, 1.5),
    (500, 10, 3, 0.0),
])
def test_matches_insightface_loops(num_pairs, num_folds, seed, sep):
    rng = np.random.default_rng(seed)
    dist, issame = _realistic_pairs(rng, num_pairs, sep)
    ours = verify(dist, issame, num_folds=num_folds)
    ref = _insightface_verify(dist, issame, num_folds=num_folds)
    assert ours == ref  # identical floats, not approximately


def test_matches_insightface_with_distances_on_the_grid():
    # Distances that fall exactly on thresholds exercise the strict `dist < threshold` rule.
    rng = np.random.default_rng(4)
    dist, issame = _realistic_pairs(rng, 400, 0.6)
    dist = np.round(dist, 2)
    assert verify(dist, issame) == _insightface_verify(dist, issame)


def test_far_target_never_reached_gives_zero_threshold():
    # Every different pair lies beyond the last threshold (3.999): FAR is 0 on the whole grid.
    issame = np.arange(100) % 2 == 0
    dist = np.where(issame, 0.5, 3.9995)
    res = verify(dist, issame)
    assert res.tar_at_far == 0.0 and res.far == 0.0
    assert res == _insightface_verify(dist, issame)


def test_explicit_folds_equal_contiguous_folds():
    rng = np.random.default_rng(5)
    dist, issame = _realistic_pairs(rng, 600, 0.8)
    folds = np.repeat(np.arange(10), 60)
    assert verify(dist, issame, folds_P=folds) == verify(dist, issame)
    # Shuffling the pairs together with their fold ids changes nothing.
    perm = rng.permutation(600)
    assert verify(dist[perm], issame[perm], folds_P=folds[perm]) == verify(dist, issame)


def test_explicit_interleaved_folds():
    rng = np.random.default_rng(6)
    dist, issame = _realistic_pairs(rng, 500, 0.8)
    folds = np.arange(500) % 5  # not contiguous, five folds
    order = np.argsort(folds, kind="stable")
    expected = verify(dist[order], issame[order], num_folds=5)
    assert verify(dist, issame, folds_P=folds) == expected
    assert verify(dist, issame, folds_P=folds) != verify(dist, issame, num_folds=5)


def test_validation_errors():
    dist = np.linspace(0, 2, 20)
    issame = np.arange(20) % 2 == 0
    with pytest.raises(ValueError, match="one length"):
        verify(dist, issame[:-1])
    with pytest.raises(ValueError, match="at least"):
        verify(dist[:5], issame[:5])
    with pytest.raises(ValueError, match="lack same or different"):
        verify(dist, np.ones(20, bool))
    with pytest.raises(ValueError, match="NaN"):
        verify(np.where(issame, np.nan, dist), issame)
    with pytest.raises(ValueError, match="folds must have"):
        verify(dist, issame, folds_P=np.zeros(19))


def test_pair_distances():
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(8, 16))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = pair_distances(unit[:4], unit[4:])
    np.testing.assert_allclose(dist, 2.0 - 2.0 * np.sum(unit[:4] * unit[4:], axis=1), atol=1e-12)
    assert dist.shape == (4,)
    with pytest.raises(ValueError):
        pair_distances(unit[:4], unit[:3])
