"""Embedding-dispersion losses (SPEC section 3) as pure functions of arrays.

Each loss spreads apart the embeddings of one group (an identity, or a forget k-means cluster
when unlearning stays label-free) so that a forgotten face no longer retrieves its own identity.
They act on the same-group pairs ``(i, j), i != j`` of a batch; a group with fewer than two real
members in the batch has no pair and contributes nothing. With no pair at all a loss is 0 with a
zero gradient, never NaN.

Shape legend: B batch, D embedding dimension.
"""

import jax
import jax.numpy as jnp

from cure_jax.losses.common import l2_normalize

# Below any cosine: fills non-pairs before a max over pairs without creating infinities.
_BELOW_COSINE = -2.0


def _pair_cosines(
    emb_BxD: jax.Array, groups_B: jax.Array, mask_B: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Cosine matrix and the mask of same-group pairs i != j between real samples.

    Args:
        emb_BxD: raw or unit embeddings.
        groups_B: int group ids.
        mask_B: optional bool or 0/1 float padding mask, nonzero = real sample.

    Returns:
        ``(cos_BxB, pairs_BxB)``: float cosines and a bool pair mask.
    """
    z_BxD = l2_normalize(emb_BxD)
    cos_BxB = z_BxD @ z_BxD.T
    batch = groups_B.shape[0]
    pairs_BxB = (groups_B[:, None] == groups_B[None, :]) & ~jnp.eye(batch, dtype=bool)
    if mask_B is not None:
        keep_B = mask_B > 0
        pairs_BxB = pairs_BxB & keep_B[:, None] & keep_B[None, :]
    return cos_BxB, pairs_BxB


def mean_dispersion_loss(
    emb_BxD: jax.Array, groups_B: jax.Array, *, mask: jax.Array | None = None
) -> jax.Array:
    """``L_disp = mean over same-group pairs (i != j) of cos(z_i, z_j)``.

    Args:
        emb_BxD: embeddings (normalised here).
        groups_B: int group ids.
        mask: optional [B] padding mask.

    Returns:
        Scalar in [-1, 1]; 0 when the batch has no same-group pair.
    """
    cos_BxB, pairs_BxB = _pair_cosines(emb_BxD, groups_B, mask)
    total = jnp.sum(jnp.where(pairs_BxB, cos_BxB, 0.0))
    count = jnp.sum(pairs_BxB)
    return total / jnp.maximum(count, 1).astype(total.dtype)


def hard_dispersion_loss(
    emb_BxD: jax.Array, groups_B: jax.Array, *, mask: jax.Array | None = None
) -> jax.Array:
    """``L_hard = mean over anchors i with a positive of max_{j: g_j = g_i, j != i} cos(z_i, z_j)``.

    Only the hardest (most similar) positive of each anchor is pushed away.

    Args:
        emb_BxD: embeddings (normalised here).
        groups_B: int group ids.
        mask: optional [B] padding mask.

    Returns:
        Scalar in [-1, 1]; 0 when the batch has no same-group pair.
    """
    cos_BxB, pairs_BxB = _pair_cosines(emb_BxD, groups_B, mask)
    hardest_B = jnp.max(jnp.where(pairs_BxB, cos_BxB, _BELOW_COSINE), axis=-1)
    has_pos_B = jnp.any(pairs_BxB, axis=-1)
    total = jnp.sum(jnp.where(has_pos_B, hardest_B, 0.0))
    count = jnp.sum(has_pos_B)
    return total / jnp.maximum(count, 1).astype(total.dtype)


def uniformity_dispersion_loss(
    emb_BxD: jax.Array, groups_B: jax.Array, *, t: float = 2.0, mask: jax.Array | None = None
) -> jax.Array:
    """``L_unif = log mean over same-group pairs of exp(2 t (cos(z_i, z_j) - 1))``.

    The uniformity loss of Wang and Isola (2020), ``exp(-t ||z_i - z_j||^2)`` on unit vectors,
    restricted to the positives: a smooth stand-in for the hard maximum.

    Args:
        emb_BxD: embeddings (normalised here).
        groups_B: int group ids.
        t: temperature of the Gaussian kernel, > 0.
        mask: optional [B] padding mask.

    Returns:
        Scalar in [-4t, 0]; 0 when the batch has no same-group pair.
    """
    cos_BxB, pairs_BxB = _pair_cosines(emb_BxD, groups_B, mask)
    logits_BxB = 2.0 * t * (cos_BxB - 1.0)
    count = jnp.sum(pairs_BxB)
    has_pairs = count > 0
    # logsumexp by hand over the masked entries: shift by the (constant) largest pair logit so
    # that exp cannot underflow to 0 for large t, and keep every intermediate finite when no pair
    # exists, so that the gradient is 0 there and not NaN.
    shift = jnp.max(jnp.where(pairs_BxB, logits_BxB, -jnp.inf))
    shift = jax.lax.stop_gradient(jnp.where(has_pairs, shift, 0.0))
    # where inside the exp too: a non-pair far above the shift would overflow to inf, and its
    # zero cotangent times inf is NaN.
    shifted_BxB = jnp.where(pairs_BxB, logits_BxB - shift, 0.0)
    sum_exp = jnp.sum(jnp.where(pairs_BxB, jnp.exp(shifted_BxB), 0.0))
    safe_sum = jnp.where(has_pairs, sum_exp, 1.0)
    log_mean = shift + jnp.log(safe_sum) - jnp.log(jnp.maximum(count, 1).astype(sum_exp.dtype))
    return jnp.where(has_pairs, log_mean, 0.0)


def dispersion_loss(
    emb_BxD: jax.Array,
    groups_B: jax.Array,
    *,
    kind: str,
    t: float = 2.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """One of the three forms by name: ``"mean"``, ``"hard"`` or ``"uniformity"`` (with ``t``).

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "mean":
        return mean_dispersion_loss(emb_BxD, groups_B, mask=mask)
    if kind == "hard":
        return hard_dispersion_loss(emb_BxD, groups_B, mask=mask)
    if kind == "uniformity":
        return uniformity_dispersion_loss(emb_BxD, groups_B, t=t, mask=mask)
    raise ValueError(f"unknown dispersion kind {kind!r}; valid: mean, hard, uniformity")
