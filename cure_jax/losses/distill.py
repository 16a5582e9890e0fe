"""Classifier and distillation losses of the baselines (SPEC section 5), as pure functions of
arrays: the fixed centroid head's logits, cross-entropy, and Hinton's temperature KL.

Shape legend: B batch, D embedding dimension, K classes (pseudo or true).
"""

import jax
import jax.numpy as jnp
import optax

from cure_jax.losses.common import l2_normalize


def head_logits(emb_BxD: jax.Array, centres_KxD: jax.Array, *, scale: float) -> jax.Array:
    """Logits [B, K] of a fixed cosine head: `scale * cos(e, c)` for raw embeddings `e` and
    unit centres `c`."""
    return scale * (l2_normalize(emb_BxD) @ centres_KxD.T)


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B))


def distill_kl(teacher_BxK: jax.Array, student_BxK: jax.Array, *,
               temperature: float) -> jax.Array:
    """`T^2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))`, summed over classes (Hinton's
    distillation, as SCRUB and Bad Teacher use it).

    Args:
      teacher_BxK: logits of the model to match (no gradient flows into them).
      student_BxK: logits of the student.
      temperature: T.

    Returns:
      Scalar.
    """
    teacher_log = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_BxK) / temperature)
    # log_softmax on both sides, not log(softmax): exact where a probability underflows to 0.
    student_log = jax.nn.log_softmax(student_BxK / temperature)
    kl_B = jnp.sum(jnp.exp(teacher_log) * (teacher_log - student_log), axis=-1)
    return temperature**2 * jnp.mean(kl_B)
