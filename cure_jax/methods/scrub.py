"""SCRUB (SPEC section 5; Kurmanji et al. 2023): a student that disobeys the teacher on the forget
set and obeys it on the retain set.

Each epoch (a pass over the retain set) starts, for the first `scrub.max_steps_epochs` epochs,
with a "max" pass over the forget set minimising `-KL_T(teacher || student)`, then a "min" pass
over the retain set minimising `gamma * CE + alpha * KL_T`. KL is summed over classes, averaged
over the batch and multiplied by T^2. Both passes share one SGD optimiser (its momentum carries
over), one jitted step each.

The teacher's logits come from its cached embedding of the same (possibly mirrored) image, through
the fixed head: the teacher network is not run. With frozen batch norm the student starts
exactly at the teacher, where the KL and its gradient are 0: the first max pass moves nothing,
and the ascent starts once a min pass has moved the student (as in the original, where dropout
and batch statistics are what first separate the two).
"""

from __future__ import annotations

import dataclasses

from cure_jax.fields import Count, CountOrZero, Fraction, NonNegativeFloat, PositiveFloat
from cure_jax.losses.distill import cross_entropy, distill_kl, head_logits
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
class ScrubConfig:
    """SCRUB's settings. The values tried on the default request: docs/interpretations.md."""

    epochs: Count = 3  # passes over the retain set
    max_steps_epochs: CountOrZero = 2  # msteps: epochs that start with a forget (max) pass
    # The paper's 5e-4 leaves the model unchanged in our step budget (the first max pass starts
    # at the teacher, where it has no gradient).
    lr: PositiveFloat = 5e-3
    momentum: Fraction = 0.9
    temperature: PositiveFloat = 4.0
    gamma: NonNegativeFloat = 0.99  # weight of the retain cross-entropy
    alpha: NonNegativeFloat = 0.001  # weight of the retain KL


def max_loss(*, scale: float, temperature: float) -> LossFn:
    """`-KL_T(teacher || student)` on a forget batch {"image", "target"}."""

    def loss_fn(student, centres_KxD, batch):
        student_logits = head_logits(student(batch["image"]), centres_KxD, scale=scale)
        teacher_logits = head_logits(batch["target"], centres_KxD, scale=scale)
        kl = distill_kl(teacher_logits, student_logits, temperature=temperature)
        return -kl, {"kl_forget": kl}

    return loss_fn


def min_loss(*, scale: float, temperature: float, gamma: float, alpha: float) -> LossFn:
    """`gamma * CE + alpha * KL_T(teacher || student)` on a retain batch {"image", "target",
    "label"}."""

    def loss_fn(student, centres_KxD, batch):
        student_logits = head_logits(student(batch["image"]), centres_KxD, scale=scale)
        teacher_logits = head_logits(batch["target"], centres_KxD, scale=scale)
        ce = cross_entropy(student_logits, batch["label"])
        kl = distill_kl(teacher_logits, student_logits, temperature=temperature)
        return gamma * ce + alpha * kl, {"ce_retain": ce, "kl_retain": kl}

    return loss_fn


@register("scrub", check=check_labels, reads=BASELINE_READS)
def run(context: UnlearnContext) -> Backbone:
    """`scrub.epochs` epochs of (max pass over forget, for the first `max_steps_epochs`) and min
    pass over retain."""
    settings = context.config.scrub
    labels = make_labels(context)
    maximise = max_loss(scale=labels.scale, temperature=settings.temperature)
    minimise = min_loss(scale=labels.scale, temperature=settings.temperature,
                        gamma=settings.gamma, alpha=settings.alpha)
    forget = context.forget.source(labels.forget)
    retain = context.retain.source(labels.retain)
    phases = []
    for epoch in range(settings.epochs):
        if epoch < settings.max_steps_epochs:
            phases.append(Phase(f"epoch{epoch}-max", maximise, forget, 1))
        phases.append(Phase(f"epoch{epoch}-min", minimise, retain, 1))
    return run_phases(context, tx=sgd(settings.lr, settings.momentum), centres_KxD=labels.centres,
                      phases=phases)
