"""Gradient Ascent (SPEC section 5): raise the cross-entropy of the forget images, nothing else.

`-CE(forget)` with a small learning rate for a few passes; nothing holds the retain set in place,
which is what the method is known for. Labels are the k-means pseudo-labels of the teacher's
embeddings, or identities with `baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    LabelledSource,
    check_labels,
    cross_entropy_phases,
    make_labels,
)


@register("grad_ascent", check=check_labels)
def run(context: UnlearnContext) -> Backbone:
    """`grad_ascent.epochs` passes over the forget set minimising -CE."""
    labels = make_labels(context)
    return cross_entropy_phases(
        context, settings=context.config.grad_ascent, labels=labels, sign=-1.0,
        phases=[("ascent", LabelledSource.of(context.forget, labels.forget),
                 context.config.grad_ascent.epochs)])
