"""Boundary Shrink (SPEC section 5; Chen et al. 2023, "Boundary Unlearning"): move each forget
image to the class just across the nearest decision boundary.

One FGSM step of size `boundary_shrink.bound` (in [0, 1] pixel space) against the frozen
teacher's margin logits on the fixed head finds, for each forget image, its nearest wrong class:
the top class of the perturbed image other than its own. The teacher is frozen, so these
neighbour labels are computed once before training, for every forget image and its mirror; the
student then minimises CE on the clean forget images toward them (SGD, small rate). Labels are
the k-means pseudo-labels of the teacher's embeddings, or identities with
`baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cure_jax import sharding
from cure_jax.fields import Count, Fraction, PositiveFloat, Range
from cure_jax.losses.common import l2_normalize
from cure_jax.losses.margin import margin_loss
from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    BASELINE_READS,
    Labels,
    Phase,
    check_labels,
    classifier_loss,
    make_labels,
    run_phases,
)
from cure_jax.optim import sgd
from data_pipelines.pipelines import ArraySource, eval_batches


@dataclasses.dataclass(frozen=True)
class BoundaryShrinkConfig:
    """Boundary Shrink's settings."""

    epochs: Count = 10  # passes over the forget set
    bound: Annotated[float, Range(0.0, 1.0, low_open=True)] = 0.1  # FGSM step in [0, 1] pixel space
    lr: PositiveFloat = 1e-3  # the paper's 1e-5 leaves the model unchanged in our 100 steps
    momentum: Fraction = 0.9


def make_neighbour_fn(graph_eval: nnx.GraphDef, *, bound: float, margin: dict):
    """`neighbours(params, batch_stats, images, labels, centres) -> int32 [B]`, jitted: the
    nearest wrong class of each image after one FGSM step.

    Args:
      graph_eval: the backbone's evaluation graph.
      bound: the FGSM step in [0, 1] pixel space.
      margin: keyword arguments of `margin_loss` (kind, scale, margin, straight_through).
    """
    # Images are normalised to [-1, 1], twice the [0, 1] range: the step doubles.
    step_size = 2.0 * bound

    @jax.jit
    def neighbours(params, batch_stats, images_BxSxSx3, labels_B, centres_KxD):
        model = nnx.merge(graph_eval, params, batch_stats)

        def cosines(images):
            return l2_normalize(model(images)) @ centres_KxD.T

        def loss(images):
            return margin_loss(cosines(images), labels_B, **margin)

        adversarial = jnp.clip(images_BxSxSx3 + step_size * jnp.sign(jax.grad(loss)(
            images_BxSxSx3)), -1.0, 1.0)
        own = jax.nn.one_hot(labels_B, centres_KxD.shape[0], dtype=bool)
        # The own class is excluded even when the step did not cross the boundary: the target
        # is always a wrong class.
        return jnp.argmax(jnp.where(own, -jnp.inf, cosines(adversarial)), axis=-1)

    return neighbours


def neighbour_labels(context: UnlearnContext, labels: Labels) -> tuple[np.ndarray, np.ndarray]:
    """Nearest wrong class int32 [N_f] of every forget image and of its mirror, by the teacher."""
    config = context.config
    neighbours = make_neighbour_fn(
        context.graphs.eval, bound=config.boundary_shrink.bound,
        margin={"kind": config.model.head, "scale": labels.scale, "margin": config.model.margin,
                "straight_through": config.model.straight_through})
    source = ArraySource(context.forget.images, labels.forget)
    centres = jnp.asarray(labels.centres)
    result = []
    for mirrored in (False, True):
        rows = []
        for batch in eval_batches(source, batch_size=config.eval.batch_size, flip=mirrored):
            images = sharding.shard_batch(batch["image"], context.mesh)
            found = neighbours(context.teacher.params, context.teacher.batch_stats, images,
                               batch["label"], centres)
            rows.append(np.asarray(found)[batch["mask"]])
        result.append(np.concatenate(rows).astype(np.int32))
    return result[0], result[1]


@register("boundary_shrink", check=check_labels, reads=BASELINE_READS)
def run(context: UnlearnContext) -> Backbone:
    """`boundary_shrink.epochs` passes over the forget set minimising CE to the neighbour
    labels."""
    settings = context.config.boundary_shrink
    labels = make_labels(context)
    plain, mirrored = neighbour_labels(context, labels)
    return run_phases(context, tx=sgd(settings.lr, settings.momentum), centres_KxD=labels.centres,
                      phases=[Phase("shrink", classifier_loss(scale=labels.scale),
                                    context.forget.source(plain, mirrored), settings.epochs)])
