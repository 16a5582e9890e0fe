"""The margin head on top of the embedding: class centres whose logits are cosines.

The centres are a matrix of class vectors, normalised when used; logits are (scaled) cosines. The
margin itself lives in `cure_jax.losses.margin`, since only the training loss uses it. CURE's
pseudo-label head and the baselines' centroid head are arrays of the same form in their methods'
states.
"""

from __future__ import annotations

import jax
from flax import nnx

from cure_jax.losses.common import l2_normalize


def cosine_logits(emb_BxD: jax.Array, centres_CxD: jax.Array) -> jax.Array:
    """Cosines [B, C] between raw embeddings and raw class vectors (both normalised here)."""
    return l2_normalize(emb_BxD) @ l2_normalize(centres_CxD).T


class CosineHead(nnx.Module):
    """Class centres W [C, D]; `head(emb)` gives cos(z, W_c) [B, C] (the margin head's input)."""

    def __init__(self, embedding_dim: int, num_classes: int, *, rngs: nnx.Rngs):
        # arcface_torch initialises the centres with N(0, 0.01); only their direction matters.
        draw = jax.random.normal(rngs.params(), (num_classes, embedding_dim))
        # The barrier keeps the scaling its own operation under `jax.jit`, as it is op by op:
        # fused into the draw, it rounds differently (1 ulp), and a jitted build would differ.
        self.centres = nnx.Param(0.01 * jax.lax.optimization_barrier(draw))

    def __call__(self, emb_BxD: jax.Array) -> jax.Array:
        return cosine_logits(emb_BxD, self.centres[...])


class FaceModel(nnx.Module):
    """A backbone and its margin head, trained together as the teacher."""

    def __init__(self, backbone: nnx.Module, head: CosineHead):
        self.backbone = backbone
        self.head = head
