"""Identity-level and per-identity splits of a labelled source (seeded, reproducible)."""

from __future__ import annotations

import dataclasses

import numpy as np


def holdout_split(labels_N: np.ndarray, *, fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Holds out `fraction` of each identity's images (at least one when it has two or more).

    Args:
      labels_N: identity label per record.
      fraction: share of each identity's images to hold out, in [0, 1).
      seed: seeds which images are held out.

    Returns:
      (train_indices, holdout_indices), sorted int64 record indices.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction {fraction} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    train, holdout = [], []
    for label in np.unique(labels_N):
        members = np.flatnonzero(labels_N == label)
        members = members[rng.permutation(len(members))]
        count = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        holdout.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))


def forget_identities(labels_N: np.ndarray, *, count: int, fraction: float, seed: int
                      ) -> np.ndarray:
    """The identities an unlearning request names: `count` of them, or `fraction` of all.

    Args:
      labels_N: identity label per training record.
      count: number of identities to forget (used when `fraction` is 0).
      fraction: share of the identities to forget, in (0, 1); 0 means use `count`.
      seed: seeds which identities are drawn.

    Returns:
      Sorted int64 identity labels.

    Raises:
      ValueError: the request is empty or names every identity (nothing would be retained).
    """
    identities = np.unique(labels_N)
    if fraction:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"unlearn.forget_fraction={fraction} must be in (0, 1)")
        count = int(round(fraction * len(identities)))
    if count < 1:
        raise ValueError("the forget set is empty: set unlearn.forget_identities >= 1 or "
                         "unlearn.forget_fraction > 0")
    if count >= len(identities):
        raise ValueError(f"the forget set would cover all {len(identities)} identities "
                         f"(unlearn.forget_identities={count}); nothing would be retained")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(identities, size=count, replace=False)).astype(np.int64)


def forget_retain_split(labels_N: np.ndarray, indices: np.ndarray, forget_ids: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Splits record `indices` into those of the forget identities and the rest.

    Returns:
      (forget_indices, retain_indices), each a subset of `indices` in its order.
    """
    is_forget = np.isin(labels_N[indices], forget_ids)
    return indices[is_forget], indices[~is_forget]


@dataclasses.dataclass(frozen=True)
class RequestSplit:
    """Which records an unlearning request covers, by identity (the evaluator's view: labels in).

    Attributes:
      forget_identities: sorted identity labels to forget.
      forget: training-record indices of the forget identities (D_f).
      retain: training-record indices of the other identities (D_r).
      forget_holdout: held-out (never trained) records of the forget identities.
      retain_holdout: held-out records of the retained identities.
    """

    forget_identities: np.ndarray
    forget: np.ndarray
    retain: np.ndarray
    forget_holdout: np.ndarray
    retain_holdout: np.ndarray

    @classmethod
    def of(cls, labels_N: np.ndarray, train_indices: np.ndarray, holdout_indices: np.ndarray,
           forget_ids: np.ndarray) -> RequestSplit:
        """The split of `forget_ids` over a labelled set's training and held-out records."""
        forget, retain = forget_retain_split(labels_N, train_indices, forget_ids)
        forget_holdout, retain_holdout = forget_retain_split(labels_N, holdout_indices,
                                                             forget_ids)
        return cls(np.asarray(forget_ids), forget, retain, forget_holdout, retain_holdout)
