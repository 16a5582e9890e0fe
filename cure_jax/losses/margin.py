"""Margin softmax losses (ArcFace, CosFace) on cosine logits.

Shapes: B batch, C classes. `cos_BxC` are cosines between unit embeddings and unit class centres.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def arcface_logits(cos_BxC: jax.Array, labels_B: jax.Array, *, scale: float, margin: float,
                   straight_through: bool = True) -> jax.Array:
    """ArcFace logits: s * cos(theta + m) for the target class, s * cos(theta) elsewhere.

    Args:
      cos_BxC: cosines in [-1, 1].
      labels_B: int class ids.
      scale: s.
      margin: additive angular margin m (radians).
      straight_through: as arcface_torch, apply the margin to the value only: the gradient is that
        of s * cos(theta) (the margin is computed under no_grad there).

    Returns:
      Logits [B, C].
    """
    one_hot = jax.nn.one_hot(labels_B, cos_BxC.shape[-1], dtype=cos_BxC.dtype)
    cos_t = jnp.sum(cos_BxC * one_hot, axis=-1)
    # Clip before the root: 1 - cos^2 can round below 0, and sqrt'(0) is infinite.
    sin_t = jnp.sqrt(jnp.clip(1.0 - jnp.square(cos_t), 1e-7, 1.0))
    cos_tm = cos_t * jnp.cos(margin) - sin_t * jnp.sin(margin)
    # Past theta = pi - m, cos(theta + m) would rise again; insightface falls back to a linear
    # penalty there so that the target logit stays monotonic in theta.
    cos_tm = jnp.where(cos_t > jnp.cos(jnp.pi - margin), cos_tm, cos_t - jnp.sin(jnp.pi - margin)
                       * margin)
    delta = cos_tm - cos_t
    if straight_through:
        delta = jax.lax.stop_gradient(delta)
    return scale * (cos_BxC + one_hot * delta[:, None])


def cosface_logits(cos_BxC: jax.Array, labels_B: jax.Array, *, scale: float,
                   margin: float) -> jax.Array:
    """CosFace logits: s * (cos(theta) - m) for the target class, s * cos(theta) elsewhere."""
    one_hot = jax.nn.one_hot(labels_B, cos_BxC.shape[-1], dtype=cos_BxC.dtype)
    return scale * (cos_BxC - margin * one_hot)


def margin_logits(cos_BxC: jax.Array, labels_B: jax.Array, *, kind: str, scale: float,
                  margin: float, straight_through: bool = True) -> jax.Array:
    """Dispatches on `kind` ("arcface" | "cosface")."""
    if kind == "arcface":
        return arcface_logits(cos_BxC, labels_B, scale=scale, margin=margin,
                              straight_through=straight_through)
    if kind == "cosface":
        return cosface_logits(cos_BxC, labels_B, scale=scale, margin=margin)
    raise ValueError(f"unknown margin head {kind!r}; valid: arcface, cosface")


def margin_loss(cos_BxC: jax.Array, labels_B: jax.Array, *, mask_B: jax.Array | None = None,
                **margin_kwargs) -> jax.Array:
    """Mean softmax cross-entropy of the margin logits (masked mean when `mask_B` is given)."""
    logits = margin_logits(cos_BxC, labels_B, **margin_kwargs)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels_B)
    if mask_B is None:
        return jnp.mean(per_example)
    mask = mask_B.astype(per_example.dtype)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
