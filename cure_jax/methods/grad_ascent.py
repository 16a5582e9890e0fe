"""Gradient Ascent (SPEC section 5): raise the cross-entropy of the forget images, nothing else.

`-CE(forget)` with a small learning rate for a few passes; nothing holds the retain set in place,
which is what the method is known for. Labels are the k-means pseudo-labels of the teacher's
embeddings, or identities with `baselines.labels=true` (`cure_jax.methods.label_free`).
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


@register("grad_ascent", check=check_labels)
def run(context: UnlearnContext) -> Backbone:
    """`grad_ascent.epochs` passes over the forget set minimising -CE."""
    config = context.config
    settings = config.grad_ascent
    batch_size = config.student.batch_size
    labels = make_labels(context)
    tx = sgd(settings.lr, settings.momentum)
    step = make_step(context.graphs, tx, classifier_loss(scale=labels.scale, sign=-1.0),
                     batch_norm=config.unlearn.batch_norm)
    seed = phase_seed(context, 0)
    iterator = labelled_iterator(LabelledSource.of(context.forget, labels.forget),
                                 batch_size=batch_size, seed=seed)
    state = run_phase(context, phase="ascent", step_fn=step,
                      state=initial_state(context, tx, labels.centres), iterator=iterator,
                      num_steps=pass_steps(len(context.forget), batch_size, settings.epochs),
                      seed=seed)
    return backbone_of(state)
