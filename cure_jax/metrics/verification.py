"""Pair verification metrics under the arcface_torch / insightface protocol.

The protocol (insightface `recognition/arcface_torch/eval/verification.py`):

1. `emb = normalise(emb_orig + emb_flip)`: the raw embeddings of an image and of its horizontal
   flip are summed, then normalised (`cure_jax.evaluation.verification_metrics`).
2. A pair's distance is the squared Euclidean distance of the two unit embeddings (`2 - 2 cos`, in
   [0, 4]); a pair is predicted "same" when its distance is strictly below the threshold.
3. Accuracy: folds over the pairs (10 contiguous ones, as `KFold(10, shuffle=False)`); thresholds
   `np.arange(0, 4, 0.01)`; for each fold the threshold with the best accuracy on the other folds
   (the first one on ties, as `np.argmax`) is measured on the held-out fold; mean and standard
   deviation (ddof 0) over folds.
4. TAR@FAR: thresholds `np.arange(0, 4, 0.001)`; on the training folds the threshold where FAR
   equals the target is found by `interp1d(far_train, thresholds, kind="slinear")`, or is 0 when
   no threshold reaches the target; TAR and FAR are measured on the held-out fold; means over folds.

Threshold sweeps count accepted pairs with `searchsorted` on sorted distances instead of one
comparison pass per threshold: the counts, and therefore every reported number, are identical.

Legend: N images, D embedding width, P pairs, T thresholds.
"""

from typing import NamedTuple

import numpy as np

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
TAR_THRESHOLDS = np.arange(0, 4, 0.001)


def pair_distances(emb_a_PxD, emb_b_PxD) -> np.ndarray:
    """Squared Euclidean distances between paired unit embeddings.

    Args:
        emb_a_PxD: unit embeddings of the first image of each pair, [P, D].
        emb_b_PxD: unit embeddings of the second image of each pair, [P, D].

    Returns:
        `||a - b||^2`, float64 [P]; equal to `2 - 2 cos(a, b)` for unit rows, in [0, 4].

    Raises:
        ValueError: if the shapes differ or are not 2-D.
    """
    a = np.asarray(emb_a_PxD, dtype=np.float64)
    b = np.asarray(emb_b_PxD, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [P, D] arrays of one shape, got {a.shape} and {b.shape}")
    # The difference form, as arcface_torch computes it, stays exact for near-identical pairs
    # where `2 - 2 cos` would cancel.
    return np.sum(np.square(a - b), axis=1)


class VerificationResult(NamedTuple):
    """Verification metrics, averaged over the folds.

    Attributes:
        accuracy: mean held-out accuracy.
        accuracy_std: standard deviation (ddof 0) of the held-out accuracies.
        threshold: mean of the per-fold best accuracy thresholds (on the distance).
        tar_at_far: mean held-out true accept rate at the interpolated FAR threshold.
        far: mean held-out false accept rate achieved at that threshold.
        num_pairs: number of pairs evaluated.
    """

    accuracy: float
    accuracy_std: float
    threshold: float
    tar_at_far: float
    far: float
    num_pairs: int


def contiguous_folds(num_pairs: int, num_folds: int) -> np.ndarray:
    """Fold id of each pair, as `sklearn.model_selection.KFold(num_folds, shuffle=False)`."""
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[: num_pairs % num_folds] += 1  # KFold gives the remainder to the first folds
    return np.repeat(np.arange(num_folds), sizes)


def _accepted_counts(dist_P, issame_P, thresholds_T):
    """Numbers of same and different pairs with `dist < threshold`, each [T], and class sizes."""
    same_sorted = np.sort(dist_P[issame_P])
    diff_sorted = np.sort(dist_P[~issame_P])
    # side="left" counts the elements strictly below each threshold: the protocol's `np.less`.
    same_acc_T = np.searchsorted(same_sorted, thresholds_T, side="left")
    diff_acc_T = np.searchsorted(diff_sorted, thresholds_T, side="left")
    return same_acc_T, diff_acc_T, same_sorted.size, diff_sorted.size


def _best_accuracy_threshold(dist_P, issame_P, thresholds_T) -> float:
    same_acc_T, diff_acc_T, _, num_diff = _accepted_counts(dist_P, issame_P, thresholds_T)
    correct_T = same_acc_T + (num_diff - diff_acc_T)  # true accepts + true rejects
    # argmax of the integer counts equals argmax of the accuracies (one common divisor), first
    # maximum on ties as the protocol's np.argmax.
    return float(thresholds_T[np.argmax(correct_T)])


def _slinear_interp(x_T, y_T, x_new: float) -> float:
    """`scipy.interpolate.interp1d(x, y, kind="slinear")(x_new)` as SciPy <= 1.9 computed it.

    The FAR curve repeats values (all thresholds below the closest impostor give FAR 0). SciPy
    <= 1.9 built a degree-1 B-spline with knots `[x0, x..., x_last]` and accepted the repeats;
    SciPy >= 1.10 raises "Expect x to not have duplicates". This is that B-spline's evaluation:
    the interval is the one after the LAST knot `<= x_new`, a zero-width interval gives 0, and
    the arithmetic follows de Boor's recursion so that the result is bit-identical.

    Args:
        x_T: non-decreasing abscissae (already sorted: FAR grows with the threshold), [T].
        y_T: ordinates, [T].
        x_new: point in [x_T[0], x_T[-1]].

    Returns:
        The interpolated ordinate.
    """
    # Index of the last x <= x_new, kept below the end so that an interval [x_i, x_{i+1}] exists.
    i = min(int(np.searchsorted(x_T, x_new, side="right")) - 1, x_T.size - 2)
    x_lo, x_hi = x_T[i], x_T[i + 1]
    if x_hi == x_lo:
        return 0.0
    w = 1.0 / (x_hi - x_lo)
    return float(y_T[i] * (w * (x_hi - x_new)) + y_T[i + 1] * (w * (x_new - x_lo)))


def _far_threshold(dist_P, issame_P, thresholds_T, far_target: float) -> float:
    _, diff_acc_T, _, num_diff = _accepted_counts(dist_P, issame_P, thresholds_T)
    far_T = diff_acc_T / num_diff
    if np.max(far_T) < far_target:
        return 0.0  # the target FAR is never reached: accept nothing, as the protocol does
    return _slinear_interp(far_T, thresholds_T, far_target)


def _validate(dist_P, issame_P, folds_P, num_folds: int, far_target: float):
    if dist_P.ndim != 1 or issame_P.ndim != 1 or dist_P.shape != issame_P.shape:
        raise ValueError(f"dist and issame must be 1-D of one length, got {dist_P.shape} and "
                         f"{issame_P.shape}")
    if not np.all(np.isfinite(dist_P)):
        raise ValueError("dist contains NaN or infinite values")
    if not 0.0 < far_target <= 1.0:
        raise ValueError(f"far_target must be in (0, 1], got {far_target}")
    if folds_P is None:
        if num_folds < 1:
            raise ValueError(f"num_folds must be >= 1, got {num_folds}")
        if dist_P.size < num_folds:
            raise ValueError(f"need at least num_folds={num_folds} pairs, got {dist_P.size}")
        return contiguous_folds(dist_P.size, num_folds)
    folds_P = np.asarray(folds_P)
    if folds_P.shape != dist_P.shape:
        raise ValueError(f"folds must have the shape of dist {dist_P.shape}, got {folds_P.shape}")
    return folds_P


def verify(
    dist_P,
    issame_P,
    *,
    num_folds: int = 10,
    far_target: float = 1e-3,
    folds_P=None,
) -> VerificationResult:
    """K-fold verification accuracy and TAR@FAR, as arcface_torch reports them.

    Args:
        dist_P: pair distances (squared Euclidean of unit embeddings, see `pair_distances`), [P].
        issame_P: True where the two images of a pair show the same person, bool [P].
        num_folds: number of contiguous folds (KFold without shuffle); 1 trains and tests on all
            pairs, as insightface's `LFold(n_splits=1)`. Unused when `folds_P` is given.
        far_target: the false accept rate at which TAR is reported.
        folds_P: optional fold id of each pair, [P] (LFW's pairs.txt defines 10 folds); the folds
            are its distinct values, each held out once (a single value trains and tests on all).

    Returns:
        A `VerificationResult` of means over the folds.

    Raises:
        ValueError: on mismatched or non-1-D inputs, non-finite distances, fewer pairs than
            folds, or a fold (held out, or all the others) that lacks same or different pairs,
            where accuracy or TAR/FAR would be undefined.
    """
    dist_P = np.asarray(dist_P, dtype=np.float64)
    issame_P = np.asarray(issame_P).astype(bool)
    folds_P = _validate(dist_P, issame_P, folds_P, num_folds, far_target)
    fold_ids = np.unique(folds_P)

    accuracies, thresholds, tars, fars = [], [], [], []
    for fold in fold_ids:
        test = folds_P == fold
        # One fold: train on the test pairs themselves, as insightface's LFold(n_splits=1).
        train = ~test if fold_ids.size > 1 else test
        for name, part in (("held-out", test), ("training", train)):
            if np.all(issame_P[part]) or not np.any(issame_P[part]):
                raise ValueError(f"the {name} pairs of fold {fold} lack same or different pairs")
        best = _best_accuracy_threshold(dist_P[train], issame_P[train], ACCURACY_THRESHOLDS)
        accepted = dist_P[test] < best
        accuracies.append(np.mean(accepted == issame_P[test]))
        thresholds.append(best)

        far_thr = _far_threshold(dist_P[train], issame_P[train], TAR_THRESHOLDS, far_target)
        accepted = dist_P[test] < far_thr
        tars.append(np.sum(accepted & issame_P[test]) / np.sum(issame_P[test]))
        fars.append(np.sum(accepted & ~issame_P[test]) / np.sum(~issame_P[test]))

    return VerificationResult(
        accuracy=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        threshold=float(np.mean(thresholds)),
        tar_at_far=float(np.mean(tars)),
        far=float(np.mean(fars)),
        num_pairs=int(dist_P.size),
    )
