"""Identity-level and per-identity splits of a labelled source (seeded, reproducible)."""

from __future__ import annotations

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
