"""Advanced NegGrad (SPEC section 5): descend on the retain set and ascend on the forget set in
the same step, `CE(retain) - CE(forget)`.

Each step pairs a forget batch with a retain batch from an endless shuffled stream; an epoch is
one pass over the forget set. The head's logits are bounded (`s * cos`), so the ascent term is
too. Labels are the k-means pseudo-labels of the teacher's embeddings, or identities with
`baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

import jax.numpy as jnp

from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    LabelledSource,
    LossFn,
    backbone_of,
    check_labels,
    cross_entropy,
    head_logits,
    initial_state,
    labelled_iterator,
    make_labels,
    make_step,
    pass_steps,
    phase_seed,
    run_phase,
    sgd,
)
from data_pipelines.pipelines import ZipIterator


def neggrad_loss(*, scale: float) -> LossFn:
    """`CE(retain) - CE(forget)` on {"forget": batch, "retain": batch}."""

    def loss_fn(student, centres_KxD, batch):
        forget, retain = batch["forget"], batch["retain"]
        num_forget = forget["image"].shape[0]
        # One forward pass over both batches: one set of batch-norm statistics in "train" mode.
        emb = student(jnp.concatenate([forget["image"], retain["image"]]))
        logits = head_logits(emb, centres_KxD, scale=scale)
        ce_forget = cross_entropy(logits[:num_forget], forget["label"])
        ce_retain = cross_entropy(logits[num_forget:], retain["label"])
        return ce_retain - ce_forget, {"ce_forget": ce_forget, "ce_retain": ce_retain}

    return loss_fn


@register("neggrad", check=check_labels)
def run(context: UnlearnContext) -> Backbone:
    """`neggrad.epochs` passes over the forget set, each step paired with a retain batch."""
    config = context.config
    settings = config.neggrad
    batch_size = config.student.batch_size
    labels = make_labels(context)
    tx = sgd(settings.lr, settings.momentum)
    step = make_step(context.graphs, tx, neggrad_loss(scale=labels.scale),
                     batch_norm=config.unlearn.batch_norm)
    seed = phase_seed(context, 0)
    iterator = ZipIterator(
        forget=labelled_iterator(LabelledSource.of(context.forget, labels.forget),
                                 batch_size=batch_size, seed=seed),
        retain=labelled_iterator(LabelledSource.of(context.retain, labels.retain),
                                 batch_size=batch_size, seed=seed + 1))
    state = run_phase(context, phase="neggrad", step_fn=step,
                      state=initial_state(context, tx, labels.centres), iterator=iterator,
                      num_steps=pass_steps(len(context.forget), batch_size, settings.epochs),
                      seed=seed)
    return backbone_of(state)
