"""Fine-tuning (SPEC section 5): cross-entropy on the retain images only.

The weakest baseline: forgetting comes only from drifting away from what the forget images alone
supported. Labels are the k-means pseudo-labels of the teacher's embeddings, or identities with
`baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    LabelledSource,
    backbone_of,
    check_labels,
    classifier_loss,
    initial_state,
    labelled_iterator,
    make_labels,
    make_step,
    pass_steps,
    phase_seed,
    run_phase,
    sgd,
)


@register("finetune", check=check_labels)
def run(context: UnlearnContext) -> Backbone:
    """`finetune.epochs` passes over the retain set minimising CE."""
    config = context.config
    settings = config.finetune
    batch_size = config.student.batch_size
    labels = make_labels(context)
    tx = sgd(settings.lr, settings.momentum)
    step = make_step(context.graphs, tx, classifier_loss(scale=labels.scale),
                     batch_norm=config.unlearn.batch_norm)
    seed = phase_seed(context, 0)
    iterator = labelled_iterator(LabelledSource.of(context.retain, labels.retain),
                                 batch_size=batch_size, seed=seed)
    state = run_phase(context, phase="finetune", step_fn=step,
                      state=initial_state(context, tx, labels.centres), iterator=iterator,
                      num_steps=pass_steps(len(context.retain), batch_size, settings.epochs),
                      seed=seed)
    return backbone_of(state)
