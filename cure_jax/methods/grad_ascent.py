"""Gradient Ascent (SPEC section 5): raise the cross-entropy of the forget images, nothing else.

`-CE(forget)` with a small learning rate for a few passes; nothing holds the retain set in place,
which is what the method is known for. Labels are the k-means pseudo-labels of the teacher's
embeddings, or identities with `baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

import dataclasses

from cure_jax.fields import Count, Fraction, PositiveFloat
from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    BASELINE_READS,
    Phase,
    check_labels,
    classifier_loss,
    make_labels,
    run_phases,
)
from cure_jax.optim import sgd


@dataclasses.dataclass(frozen=True)
class GradAscentConfig:
    """Gradient Ascent's settings."""

    epochs: Count = 10  # passes over the forget set (2 move nothing here)
    lr: PositiveFloat = 5e-4  # 1e-3 collapses everything in 10 epochs
    momentum: Fraction = 0.9


@register("grad_ascent", check=check_labels, reads=BASELINE_READS)
def run(context: UnlearnContext) -> Backbone:
    """`grad_ascent.epochs` passes over the forget set minimising -CE."""
    settings = context.config.grad_ascent
    labels = make_labels(context)
    return run_phases(context, tx=sgd(settings.lr, settings.momentum), centres_KxD=labels.centres,
                      phases=[Phase("ascent", classifier_loss(scale=labels.scale, sign=-1.0),
                                    context.forget.source(labels.forget), settings.epochs)])
