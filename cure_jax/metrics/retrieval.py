"""Leave-one-out retrieval metrics (R@k, CMC, mAP) and cluster compactness.

Every query ranks all other images of the pool by cosine similarity (its own image excluded);
the positives of a query are the other pool images of its identity. Queries without a positive
are skipped.

No sorting: sorting is slow under XLA:CPU, and only the positives' ranks matter. The rank of a
positive is one plus the number of pool scores strictly greater than its score. Counting it for
every positive against the whole row would cost O(N P) per query; instead each pool image's
number of beaten positives is computed in one vectorised pass (positives sorted, compared 16 at
a time), and a histogram of those numbers gives every positive's count (see `_block_ranks`).
Queries are processed in blocks of `block_size` rows against the whole pool, so memory is
O(block_size * N), never O(N^2). Queries are grouped by their number of positives (padded to
16 times a power of two), so one large identity does not slow down the others.

Tie rule (documented, and shared by the reference tests): the rank of a positive with score s
is `1 + #(other pool images with score > s)` and the number of positives ranked at or above it
is `1 + #(positives with score > s)`; tied items never push each other down. With continuous
embeddings ties have probability zero and this equals ranking by a descending sort.
- CMC[k - 1]: fraction of queries whose best positive has rank <= k; R@1 = CMC[0], R@5 = CMC[4].
- AP of a query: mean over its positives of `#(positives at or above) / rank`; mAP: mean AP.

Cluster compactness `CS` = mean over identities with >= 2 images of the mean pairwise cosine
between that identity's embeddings (i != j), computed in O(N D) from per-identity sums:
`sum_{i != j} <z_i, z_j> = ||sum_i z_i||^2 - sum_i ||z_i||^2`.

Legend: N pool images, D width, Q queries, B query block, P padded positives per query,
K identities.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class RetrievalResult(NamedTuple):
    """Leave-one-out retrieval metrics over the queries that have a positive.

    Attributes:
        r1: rank-1 recognition rate, CMC[0].
        r5: fraction of queries with a positive among their 5 nearest neighbours.
        map: mean average precision.
        cmc: cumulative match characteristic, float64 [max_rank].
        num_queries: number of queries evaluated (those with a positive in the pool).
    """

    r1: float
    r5: float
    map: float
    cmc: np.ndarray
    num_queries: int


# Positives are compared with the score rows this many at a time: up to ~16, XLA:CPU fuses the
# comparisons and their sum over the positives into one vectorised pass over the [B, N] scores
# (measured 0.07 s for B = 1024, N = 20,000, the same at 9 or 16 positives; 64 at once took 5 s).
_POS_CHUNK = 16


def _next_pow2(n: np.ndarray) -> np.ndarray:
    return 1 << np.ceil(np.log2(np.maximum(n, 1))).astype(np.int64)


def _padded_positives(num_pos: np.ndarray) -> np.ndarray:
    """Positives slots per query: _POS_CHUNK times a power of two (few shapes, few compiles)."""
    return _POS_CHUNK * _next_pow2(-(-num_pos // _POS_CHUNK))


def _count_beaten(scores_BxN, pos_sorted_BxP):
    """For every pool image, the number of the query's positives it scores strictly above."""
    num_chunks = pos_sorted_BxP.shape[1] // _POS_CHUNK

    def add_chunk(i, beaten_BxN):
        chunk_BxC = jax.lax.dynamic_slice_in_dim(pos_sorted_BxP, i * _POS_CHUNK, _POS_CHUNK, 1)
        above_BxCxN = scores_BxN[:, None, :] > chunk_BxC[:, :, None]
        return beaten_BxN + jnp.sum(above_BxCxN, axis=1, dtype=jnp.int32)

    zeros_BxN = jnp.zeros(scores_BxN.shape, jnp.int32)
    return jax.lax.fori_loop(0, num_chunks, add_chunk, zeros_BxN)


@jax.jit
def _block_ranks(pool_NxD, query_B, pos_idx_BxP, pos_valid_BxP):
    """Best-positive rank and AP of a block of queries, by counting instead of sorting.

    With the positives sorted ascending, p_0 <= ... <= p_{n-1}, the positives an image beats
    (`score > p`) are a prefix, so "the image scores above p_m" is "it beats at least m + 1
    positives". One pass gives every image's count of beaten positives; a histogram of those
    counts, accumulated from the top, gives every positive's number of higher-scoring images in
    O(N + P) more, instead of the O(N P) of comparing each positive with the whole row.

    Args:
        pool_NxD: unit embeddings of the pool, [N, D].
        query_B: pool index of each query, int [B].
        pos_idx_BxP: pool indices of each query's positives, padded, int [B, P].
        pos_valid_BxP: False on padding, bool [B, P]; P a multiple of _POS_CHUNK.

    Returns:
        `(first_rank_B, ap_B)`: the rank of the best positive (N + 1 for a row without valid
        positives) and the average precision (0 for such a row).
    """
    num_b, num_p = pos_idx_BxP.shape
    num_pool = pool_NxD.shape[0]
    scores_BxN = jnp.matmul(pool_NxD[query_B], pool_NxD.T, precision=jax.lax.Precision.HIGHEST)
    # -inf puts the query's own image below everything: it beats no positive.
    is_self_BxN = jnp.arange(num_pool)[None, :] == query_B[:, None]
    scores_BxN = jnp.where(is_self_BxN, -jnp.inf, scores_BxN)
    # Gathered from the same matrix, a positive's score compares exactly with its own entry.
    # Padding becomes +inf: sorted last, and no image scores above it.
    pos_BxP = jnp.where(pos_valid_BxP, jnp.take_along_axis(scores_BxN, pos_idx_BxP, 1), jnp.inf)
    pos_sorted_BxP = jnp.sort(pos_BxP, axis=1)
    num_pos_B = jnp.sum(pos_valid_BxP, axis=1)
    valid_BxP = jnp.arange(num_p)[None, :] < num_pos_B[:, None]

    beaten_BxN = _count_beaten(scores_BxN, pos_sorted_BxP)
    bins_BxN = beaten_BxN + jnp.arange(num_b)[:, None] * (num_p + 1)
    hist_BxV = jax.ops.segment_sum(
        jnp.ones(num_b * num_pool, jnp.int32), bins_BxN.ravel(), num_b * (num_p + 1)
    ).reshape(num_b, num_p + 1)
    # Images above p_m = images beating >= m + 1 positives: a suffix sum of the histogram.
    at_least_BxV = jnp.flip(jnp.cumsum(jnp.flip(hist_BxV, 1), axis=1), 1)
    rank_BxP = 1 + at_least_BxV[:, 1:]

    # Positives at or above p_m: 1 + those strictly greater = n - (last index of p_m's run of
    # equal values), found by a reverse running minimum over the run ends.
    idx_P = jnp.arange(num_p)
    run_end_BxP = jnp.where(pos_sorted_BxP[:, :-1] != pos_sorted_BxP[:, 1:], idx_P[:-1], num_p)
    run_end_BxP = jnp.concatenate([run_end_BxP, jnp.full((num_b, 1), num_p - 1)], axis=1)
    run_end_BxP = jax.lax.cummin(run_end_BxP, axis=1, reverse=True)
    pos_above_BxP = num_pos_B[:, None] - run_end_BxP

    precision_BxP = jnp.where(valid_BxP, pos_above_BxP / rank_BxP, 0.0)
    ap_B = jnp.sum(precision_BxP, axis=1) / jnp.maximum(num_pos_B, 1)
    first_rank_B = jnp.min(jnp.where(valid_BxP, rank_BxP, num_pool + 1), axis=1)
    return first_rank_B, ap_B


class _IdentityIndex(NamedTuple):
    order_N: np.ndarray  # pool indices sorted by identity (stable)
    start_K: np.ndarray  # where each identity starts in order_N
    count_K: np.ndarray  # images per identity
    group_N: np.ndarray  # identity index of each image
    slot_N: np.ndarray  # position of each image inside its identity's run of order_N


def _identity_index(labels_N: np.ndarray) -> _IdentityIndex:
    order_N = np.argsort(labels_N, kind="stable")
    _, start_K, count_K = np.unique(labels_N[order_N], return_index=True, return_counts=True)
    group_N = np.empty(labels_N.size, np.int64)
    group_N[order_N] = np.repeat(np.arange(start_K.size), count_K)
    slot_N = np.empty(labels_N.size, np.int64)
    slot_N[order_N] = np.arange(labels_N.size) - np.repeat(start_K, count_K)
    return _IdentityIndex(order_N, start_K, count_K, group_N, slot_N)


def _positive_index(index: _IdentityIndex, query_Q: np.ndarray, num_padded: int):
    """Pool indices of the positives of each query, padded to `num_padded`, and their mask."""
    group_Q = index.group_N[query_Q]
    k_1xP = np.arange(num_padded)[None, :]
    # The query's own slot is skipped: slots at or after it move one along.
    member_QxP = k_1xP + (k_1xP >= index.slot_N[query_Q][:, None])
    valid_QxP = k_1xP < (index.count_K[group_Q] - 1)[:, None]
    member_QxP = np.where(valid_QxP, member_QxP, 0)
    return index.order_N[index.start_K[group_Q][:, None] + member_QxP], valid_QxP


def per_query_retrieval(unit_emb_NxD, labels_N, *, query_mask_N=None, block_size: int = 1024):
    """Best-positive rank and average precision of every query that has a positive.

    Args:
        unit_emb_NxD: unit embeddings of the pool, [N, D].
        labels_N: identity of each pool image, [N] (any sortable dtype).
        query_mask_N: True for the images that query, bool [N]; all images when None.
        block_size: queries per block; memory grows as block_size * N.

    Returns:
        `(query_idx, first_rank, ap)`: pool indices of the evaluated queries (ascending), int
        [Q]; rank of each one's best positive (1 = nearest neighbour), int [Q]; and its
        average precision, float64 [Q].

    Raises:
        ValueError: on mismatched shapes or a non-positive block size.
    """
    emb = jnp.asarray(unit_emb_NxD, dtype=jnp.float32)
    labels_N = np.asarray(labels_N)
    num_pool = labels_N.shape[0]
    if emb.ndim != 2 or labels_N.ndim != 1 or emb.shape[0] != num_pool:
        raise ValueError(f"expected embeddings [N, D] and labels [N], got {emb.shape} and "
                         f"{labels_N.shape}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    mask = np.ones(num_pool, bool) if query_mask_N is None else np.asarray(query_mask_N, bool)
    if mask.shape != (num_pool,):
        raise ValueError(f"query_mask must have shape ({num_pool},), got {mask.shape}")

    index = _identity_index(labels_N)
    num_pos_N = index.count_K[index.group_N] - 1
    query_Q = np.flatnonzero(mask & (num_pos_N > 0))
    padded_Q = _padded_positives(num_pos_N[query_Q])
    first_Q = np.empty(query_Q.size, np.int64)
    ap_Q = np.empty(query_Q.size, np.float64)
    for num_padded in np.unique(padded_Q):
        sel = np.flatnonzero(padded_Q == num_padded)
        # A power-of-two row count for small groups bounds both padding waste and recompiles.
        rows = int(min(block_size, _next_pow2(np.array(sel.size))))
        for lo in range(0, sel.size, rows):
            part = sel[lo : lo + rows]
            block_B = np.zeros(rows, np.int64)
            block_B[: part.size] = query_Q[part]
            pos_idx, pos_valid = _positive_index(index, block_B, int(num_padded))
            pos_valid[part.size :] = False  # padding rows: results are dropped below
            first, ap = _block_ranks(emb, jnp.asarray(block_B, jnp.int32),
                                     jnp.asarray(pos_idx, jnp.int32), jnp.asarray(pos_valid))
            first_Q[part] = np.asarray(first)[: part.size]
            ap_Q[part] = np.asarray(ap)[: part.size]
    return query_Q, first_Q, ap_Q


def retrieval_metrics(
    unit_emb_NxD,
    labels_N,
    *,
    query_mask_N=None,
    max_rank: int = 10,
    block_size: int = 1024,
) -> RetrievalResult:
    """Leave-one-out R@1, R@5, mAP and CMC of a pool (see the module docstring for ties).

    Args:
        unit_emb_NxD: unit embeddings of the pool, [N, D] (cosine = dot product).
        labels_N: identity of each pool image, [N].
        query_mask_N: True for the images that query, bool [N]; all images when None. Every
            query ranks the whole pool, masked or not, except itself.
        max_rank: length of the CMC curve.
        block_size: queries per block; memory grows as block_size * N.

    Returns:
        A `RetrievalResult` over the queries that have at least one positive in the pool.

    Raises:
        ValueError: on mismatched shapes, `max_rank < 1`, or when no query has a positive.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    _, first_Q, ap_Q = per_query_retrieval(
        unit_emb_NxD, labels_N, query_mask_N=query_mask_N, block_size=block_size
    )
    if first_Q.size == 0:
        raise ValueError("no query has another image of its identity in the pool")
    cmc = np.mean(first_Q[None, :] <= np.arange(1, max_rank + 1)[:, None], axis=1)
    return RetrievalResult(
        r1=float(np.mean(first_Q <= 1)),
        r5=float(np.mean(first_Q <= 5)),
        map=float(np.mean(ap_Q)),
        cmc=cmc,
        num_queries=int(first_Q.size),
    )


@functools.partial(jax.jit, static_argnames="num_segments")
def _identity_sums(emb_NxD, segment_N, *, num_segments: int):
    sum_KxD = jax.ops.segment_sum(emb_NxD, segment_N, num_segments)
    sq_norm_K = jax.ops.segment_sum(jnp.sum(emb_NxD * emb_NxD, axis=-1), segment_N, num_segments)
    return jnp.sum(sum_KxD * sum_KxD, axis=-1), sq_norm_K


def per_identity_compactness(unit_emb_NxD, labels_N, *, label_mask=None):
    """Mean pairwise cosine (i != j) within each identity that has at least two images.

    Args:
        unit_emb_NxD: unit embeddings, [N, D].
        labels_N: identity of each image, [N].
        label_mask: True for the images to include, bool [N] (for example
            `np.isin(labels, forget_ids)`); all images when None.

    Returns:
        `(identities, compactness, counts)`: the identities with >= 2 included images (sorted),
        [K]; their mean pairwise cosine, float64 [K]; their numbers of images, int [K].

    Raises:
        ValueError: on mismatched shapes.
    """
    emb = jnp.asarray(unit_emb_NxD, dtype=jnp.float32)
    labels_N = np.asarray(labels_N)
    if emb.ndim != 2 or labels_N.ndim != 1 or emb.shape[0] != labels_N.shape[0]:
        raise ValueError(f"expected embeddings [N, D] and labels [N], got {emb.shape} and "
                         f"{labels_N.shape}")
    keep_N = np.ones(labels_N.shape, bool) if label_mask is None else np.asarray(label_mask, bool)
    if keep_N.shape != labels_N.shape:
        raise ValueError(f"label_mask must have shape {labels_N.shape}, got {keep_N.shape}")
    identities_K, segment_N, count_K = np.unique(
        labels_N[keep_N], return_inverse=True, return_counts=True
    )
    sum_sq_K, sq_norm_K = _identity_sums(
        emb[np.flatnonzero(keep_N)], jnp.asarray(segment_N), num_segments=int(identities_K.size)
    )
    pairs = count_K >= 2
    n_K = count_K[pairs].astype(np.float64)
    # ||sum z||^2 includes the n diagonal terms <z_i, z_i>; subtract them, then average the
    # n (n - 1) ordered off-diagonal pairs.
    off_diag_K = np.asarray(sum_sq_K, np.float64)[pairs] - np.asarray(sq_norm_K, np.float64)[pairs]
    return identities_K[pairs], off_diag_K / (n_K * (n_K - 1)), count_K[pairs]


def cluster_compactness(unit_emb_NxD, labels_N, *, label_mask=None) -> float:
    """Cluster compactness CS: mean over identities of their mean pairwise cosine.

    Args:
        unit_emb_NxD: unit embeddings, [N, D].
        labels_N: identity of each image, [N].
        label_mask: True for the images to include, bool [N]; all images when None.

    Returns:
        CS over the identities with at least two included images.

    Raises:
        ValueError: on mismatched shapes, or when no identity has two included images.
    """
    _, compactness_K, _ = per_identity_compactness(unit_emb_NxD, labels_N, label_mask=label_mask)
    if compactness_K.size == 0:
        raise ValueError("no identity has two or more images")
    return float(np.mean(compactness_K))
