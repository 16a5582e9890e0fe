"""Fine-tuning (SPEC section 5): cross-entropy on the retain images only.

The weakest baseline: forgetting comes only from drifting away from what the forget images alone
supported. Labels are the k-means pseudo-labels of the teacher's embeddings, or identities with
`baselines.labels=true` (`cure_jax.methods.label_free`).
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
class FinetuneConfig:
    """Fine-tuning's settings."""

    epochs: Count = 2  # passes over the retain set
    lr: PositiveFloat = 1e-3
    momentum: Fraction = 0.9


@register("finetune", check=check_labels, reads=BASELINE_READS)
def run(context: UnlearnContext) -> Backbone:
    """`finetune.epochs` passes over the retain set minimising CE."""
    settings = context.config.finetune
    labels = make_labels(context)
    return run_phases(context, tx=sgd(settings.lr, settings.momentum), centres_KxD=labels.centres,
                      phases=[Phase("finetune", classifier_loss(scale=labels.scale),
                                    context.retain.source(labels.retain), settings.epochs)])
