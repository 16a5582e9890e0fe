"""Verification for any labelled face set: identities held out of training, and balanced
same / different pairs drawn among their images in 10 folds, named as LFW's `pairs.txt` names
them.

A folder of faces (or a `.rec`, or a TFDS set) that comes with no `pairs.txt` and no `.bin` is
verified this way: `holdout_identities` picks the people that do not train, `draw_pairs` draws
distinct pairs among their images (seeded) and `as_pairs` names each image `name number`, with
`number` the 1-based position of the image among its identity's records: its place in the
sorted file names of a folder (`Name_0003.jpg` is number 3 in LFW's layout), in key order in a
`.rec` or a TFDS set. A run keeps its pairs in its folder as `verification_pairs.txt`, so that a
rerun can check that it draws the same ones.

    held_out = holdout_identities(labels_N, fraction=0.1, seed=0)
    idx_a, idx_b, issame, folds = draw_pairs(held_out_labels_M, pairs_per_fold=150, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines.sources.lfw_pairs import Pair

NUM_FOLDS = 10  # LFW's View 2 and arcface_torch's protocol


def holdout_identities(labels_N: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """The identities that do not train: `fraction` of those with at least two images (same
    pairs need two), at least 2 (different pairs need two people), drawn with `seed`.

    Args:
      labels_N: identity label of every record.
      fraction: share of the identities with two or more images to hold out, in (0, 1).
      seed: seeds the draw.

    Returns:
      Sorted int64 identity labels.

    Raises:
      ValueError: fewer than 2 identities with two images, or fewer than 2 left to train.
    """
    classes, counts = np.unique(labels_N, return_counts=True)
    eligible = classes[counts >= 2]
    count = max(2, int(round(fraction * len(eligible))))
    if len(eligible) < 2 or len(classes) - count < 2:
        raise ValueError(
            f"cannot hold out {count} of {len(classes)} identities for verification pairs "
            f"({len(eligible)} have two images or more; at least 2 must be held out and 2 must "
            "train)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))  # apart from other draws
    return np.sort(rng.choice(eligible, size=count, replace=False)).astype(np.int64)


def _grouped(labels_N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(records sorted by identity, start of each identity among them, its count)."""
    _, inverse, counts = np.unique(labels_N, return_inverse=True, return_counts=True)
    members = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return members, starts, counts


def max_pairs_per_fold(labels_N: np.ndarray, num_folds: int = NUM_FOLDS) -> int:
    """The most same pairs (and as many different ones) per fold that distinct pairs allow."""
    _, _, counts = _grouped(labels_N)
    same = int(np.sum(counts * (counts - 1) // 2))
    different = int((np.sum(counts) ** 2 - np.sum(counts**2)) // 2)
    return min(same, different) // num_folds


def _same_pairs(labels_N: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` distinct same-identity pairs [size, 2] (first < second), every identity with two
    images equally likely to give each."""
    members, starts, counts = _grouped(labels_N)
    pairs, weights = [], []
    for start, count in zip(starts[counts >= 2], counts[counts >= 2], strict=True):
        first, second = np.triu_indices(count, 1)
        pairs.append(members[start + np.stack([first, second], axis=1)])
        weights.append(np.full(len(first), 1.0 / len(first)))
    pairs, weights = np.concatenate(pairs), np.concatenate(weights)
    chosen = rng.choice(len(pairs), size=size, replace=False, p=weights / weights.sum())
    return np.sort(pairs[chosen], axis=1)


def _different_pairs(labels_N: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` distinct pairs [size, 2] (first < second) of two identities, both drawn uniformly,
    then one image of each."""
    members, starts, counts = _grouped(labels_N)
    taken: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < size:  # rejection of repeats: callers ask for at most the distinct count
        cls_a = rng.integers(len(counts), size=size)
        cls_b = (cls_a + rng.integers(1, len(counts), size=size)) % len(counts)
        idx_a = members[starts[cls_a] + rng.integers(counts[cls_a])]
        idx_b = members[starts[cls_b] + rng.integers(counts[cls_b])]
        for a, b in zip(np.minimum(idx_a, idx_b), np.maximum(idx_a, idx_b), strict=True):
            if (int(a), int(b)) not in taken and len(pairs) < size:
                taken.add((int(a), int(b)))
                pairs.append((int(a), int(b)))
    return np.asarray(pairs, np.int64).reshape(size, 2)


def draw_pairs(labels_N: np.ndarray, *, pairs_per_fold: int, seed: int,
               num_folds: int = NUM_FOLDS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct balanced verification pairs in `pairs.txt` order: fold by fold, its
    `pairs_per_fold` same-identity pairs, then as many different-identity pairs, each block
    sorted by record.

    Args:
      labels_N: identity of every record (the held-out identities' records).
      pairs_per_fold: same pairs (and different pairs) per fold, at most `max_pairs_per_fold`.
      seed: seeds the draw; the same arguments always give the same pairs.

    Returns:
      (idx_a int64 [P], idx_b int64 [P], issame bool [P], folds int32 [P]), P = 2 x folds x
      pairs_per_fold, record indices with idx_a < idx_b.

    Raises:
      ValueError: `pairs_per_fold` below 1 or above what distinct pairs allow.
    """
    most = max_pairs_per_fold(labels_N, num_folds)
    if not 1 <= pairs_per_fold <= most:
        raise ValueError(f"{pairs_per_fold} same and different pairs per fold asked for; these "
                         f"{len(labels_N)} images allow 1 to {most}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    total = num_folds * pairs_per_fold
    same, different = _same_pairs(labels_N, total, rng), _different_pairs(labels_N, total, rng)
    blocks = []
    for fold in range(num_folds):
        rows = slice(fold * pairs_per_fold, (fold + 1) * pairs_per_fold)
        for kind in (same[rows], different[rows]):
            blocks.append(kind[np.lexsort((kind[:, 1], kind[:, 0]))])
    pairs = np.concatenate(blocks)
    issame = np.tile(np.repeat([True, False], pairs_per_fold), num_folds)
    folds = np.repeat(np.arange(num_folds, dtype=np.int32), 2 * pairs_per_fold)
    return pairs[:, 0], pairs[:, 1], issame, folds


def as_pairs(idx_a: np.ndarray, idx_b: np.ndarray, issame: np.ndarray, folds: np.ndarray,
             labels_N: np.ndarray, names: Sequence[str]) -> list[Pair]:
    """The pairs as `pairs.txt` names them: identity name and the 1-based position of the image
    among its identity's records (records of one identity in their reading order).

    Args:
      idx_a, idx_b, issame, folds: [P] as `draw_pairs` returns them.
      labels_N: identity of every record; names: name of each identity label.
    """
    members, starts, counts = _grouped(labels_N)
    number = np.empty(len(labels_N), np.int64)
    number[members] = np.arange(len(labels_N)) - np.repeat(starts, counts) + 1

    def who(index) -> tuple[str, int]:
        return names[int(labels_N[index])], int(number[index])

    return [Pair(*who(a), *who(b), bool(same), int(fold))
            for a, b, same, fold in zip(idx_a, idx_b, issame, folds, strict=True)]
