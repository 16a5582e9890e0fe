"""The figures of a forget request's audit, as pure functions of embeddings.

Two views:
- label-free, what any training set allows: the request photos' ranks against the images the
  search found, their nearest training neighbours, the found images' compactness;
- with the data's identity labels (the evaluator's view): the search's precision and recall
  against the identity it landed on, and every forgotten person's retrieval.

Embeddings are unit rows. Legend: P photos, N training images, M pool images, K neighbours.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cure_jax.metrics.retrieval import per_query_retrieval


class SearchQuality(NamedTuple):
    """The search against the identity labels.

    Attributes:
      identity: the label most of the found images carry (the person the search landed on).
      precision: share of the found images with that label.
      recall: share of that identity's candidate training images that were found.
      others: found images of other identities.
      missed: that identity's candidate images not found.
    """

    identity: int
    precision: float
    recall: float
    others: int
    missed: int


def search_quality(found_labels_F: np.ndarray, candidate_labels_C: np.ndarray) -> SearchQuality:
    """Precision and recall of a search that found images with labels `found_labels_F` among
    candidates with labels `candidate_labels_C` (the found ones included).

    Raises:
      ValueError: nothing was found.
    """
    if len(found_labels_F) == 0:
        raise ValueError("the search found nothing: precision is undefined")
    values, counts = np.unique(found_labels_F, return_counts=True)
    identity = int(values[np.argmax(counts)])
    hits = int(np.max(counts))
    total = int(np.sum(candidate_labels_C == identity))
    return SearchQuality(identity, hits / len(found_labels_F), hits / total,
                         len(found_labels_F) - hits, total - hits)


def photo_ranks(photos_PxD: np.ndarray, train_NxD: np.ndarray, positive_N: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's retrieval of the positive training images (the images found).

    Args:
      photos_PxD: unit embeddings of the request photos.
      train_NxD: unit embeddings of the training images.
      positive_N: bool, the positives.

    Returns:
      (rank of the best positive, 1 = nearest, int [P]; average precision over the positives,
      float64 [P]). Ties count in the positive's favour, as `metrics.retrieval`.
    """
    scores_PxN = photos_PxD @ train_NxD.T
    ranks, aps = [], []
    for row in scores_PxN:
        positive = np.sort(row[positive_N])[::-1]
        negative = np.sort(row[~positive_N])
        # Images above each positive: the negatives scoring higher, plus the higher positives.
        above_neg = len(negative) - np.searchsorted(negative, positive, side="right")
        rank = above_neg + np.arange(1, len(positive) + 1)
        ranks.append(int(rank[0]))
        aps.append(float(np.mean(np.arange(1, len(positive) + 1) / rank)))
    return np.asarray(ranks), np.asarray(aps)


def nearest_neighbours(photos_PxD: np.ndarray, train_NxD: np.ndarray, k: int) -> np.ndarray:
    """int [P, K]: each photo's K most similar training images, most similar first."""
    scores_PxN = photos_PxD @ train_NxD.T
    top = np.argpartition(-scores_PxN, min(k, scores_PxN.shape[1] - 1), axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores_PxN, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def compactness(unit_FxD: np.ndarray) -> float:
    """Mean pairwise cosine (i != j) of a set of unit embeddings (the person's cluster
    compactness, as `metrics.retrieval.cluster_compactness` for one identity)."""
    count = len(unit_FxD)
    if count < 2:
        return float("nan")
    total = unit_FxD.sum(axis=0)
    # ||sum z||^2 counts the n diagonal terms <z, z> too: take them out.
    off_diagonal = float(total @ total) - float(np.sum(unit_FxD * unit_FxD))
    return off_diagonal / (count * (count - 1))


def person_retrieval(pool_MxD: np.ndarray, labels_M: np.ndarray, people: list[int]
                     ) -> dict[int, tuple[float, float]]:
    """{person: (mAP, R@1)}: leave-one-out retrieval of each person's images over the pool.

    Args:
      pool_MxD: unit embeddings of every image of the training identities.
      labels_M: their identities.
      people: the identities to measure.
    """
    query_M = np.isin(labels_M, people)
    query_Q, first_Q, ap_Q = per_query_retrieval(pool_MxD, labels_M, query_mask_N=query_M)
    out = {}
    for person in people:
        mine = labels_M[query_Q] == person
        if np.any(mine):
            out[int(person)] = (float(np.mean(ap_Q[mine])), float(np.mean(first_Q[mine] <= 1)))
    return out
