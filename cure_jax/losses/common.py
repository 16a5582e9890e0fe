"""Vector helpers every part of the package shares: L2 normalisation, cosine similarity and
masked means, as pure functions of arrays.

One L2 normalisation for losses, heads, clustering and metrics alike: the same epsilon rule
everywhere, differentiable at zero.

Shape legend: B rows (a batch), D vector dimension.
"""

import jax
import jax.numpy as jnp

# Added under the square root of every L2 normalisation: the gradient stays finite at e = 0
# (norm >= 1e-6), which padded all-zero rows reach, and it is far below any real embedding norm.
NORM_EPS = 1e-12


def l2_normalize(x_BxD: jax.Array, *, eps: float = NORM_EPS) -> jax.Array:
    """Scales each row to unit L2 norm.

    Args:
        x_BxD: vectors along the last axis, any leading shape.
        eps: added to the squared norm, so that the result and its gradient are finite at 0.

    Returns:
        ``x / sqrt(sum x^2 + eps)``, same shape as ``x_BxD``.
    """
    # rsqrt of (sum + eps) rather than x / max(norm, eps): differentiable everywhere, even at 0.
    return x_BxD * jax.lax.rsqrt(jnp.sum(jnp.square(x_BxD), axis=-1, keepdims=True) + eps)


def cosine(a_BxD: jax.Array, b_BxD: jax.Array) -> jax.Array:
    """Row-wise cosine similarity.

    Args:
        a_BxD: raw vectors.
        b_BxD: raw vectors, same shape.

    Returns:
        ``cos(a_i, b_i)``, shape [B].
    """
    return jnp.sum(l2_normalize(a_BxD) * l2_normalize(b_BxD), axis=-1)


def masked_mean(values_B: jax.Array, mask_B: jax.Array | None = None) -> jax.Array:
    """Mean over the rows whose mask is nonzero; 0 when there are none.

    Args:
        values_B: per-sample values, shape [B].
        mask_B: bool or 0/1 float, shape [B], nonzero = real sample; None = all real.

    Returns:
        Scalar mean.
    """
    if mask_B is None:
        return jnp.mean(values_B)
    keep_B = mask_B > 0
    # where, not values * mask: a NaN or inf in a padded row must not leak into the sum.
    total = jnp.sum(jnp.where(keep_B, values_B, 0.0))
    count = jnp.sum(keep_B)
    return total / jnp.maximum(count, 1).astype(total.dtype)
