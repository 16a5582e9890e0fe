"""Fine-tuning (SPEC section 5): cross-entropy on the retain images only.

The weakest baseline: forgetting comes only from drifting away from what the forget images alone
supported. Labels are the k-means pseudo-labels of the teacher's embeddings, or identities with
`baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    LabelledSource,
    check_labels,
    cross_entropy_phases,
    make_labels,
)


@register("finetune", check=check_labels)
def run(context: UnlearnContext) -> Backbone:
    """`finetune.epochs` passes over the retain set minimising CE."""
    labels = make_labels(context)
    return cross_entropy_phases(
        context, settings=context.config.finetune, labels=labels,
        phases=[("finetune", LabelledSource.of(context.retain, labels.retain),
                 context.config.finetune.epochs)])
