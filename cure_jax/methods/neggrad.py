"""Advanced NegGrad (SPEC section 5): descend on the retain set and ascend on the forget set in
the same step, `CE(retain) - CE(forget)`.

Each step pairs a forget batch with a retain batch from an endless shuffled stream; an epoch is
one pass over the forget set. The head's logits are bounded (`s * cos`), so the ascent term is
too. Labels are the k-means pseudo-labels of the teacher's embeddings, or identities with
`baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from cure_jax.fields import Count, Fraction, PositiveFloat
from cure_jax.losses.distill import cross_entropy, head_logits
from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    BASELINE_READS,
    LossFn,
    Phase,
    check_labels,
    make_labels,
    run_phases,
)
from cure_jax.optim import sgd


@dataclasses.dataclass(frozen=True)
class NegGradConfig:
    """Advanced NegGrad's settings."""

    # Passes over the forget set, each step paired with a retain batch. The paper's 2 epochs are
    # hundreds of steps at CASIA scale but 20 here, which move nothing.
    epochs: Count = 10
    lr: PositiveFloat = 1e-3
    momentum: Fraction = 0.9


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


@register("neggrad", check=check_labels, reads=BASELINE_READS)
def run(context: UnlearnContext) -> Backbone:
    """`neggrad.epochs` passes over the forget set, each step paired with a retain batch."""
    settings = context.config.neggrad
    labels = make_labels(context)
    paired = {"forget": context.forget.source(labels.forget),
              "retain": context.retain.source(labels.retain)}
    return run_phases(context, tx=sgd(settings.lr, settings.momentum), centres_KxD=labels.centres,
                      phases=[Phase("neggrad", neggrad_loss(scale=labels.scale), paired,
                                    settings.epochs)])
