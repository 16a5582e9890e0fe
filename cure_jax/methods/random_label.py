"""Random Labeling (SPEC section 5): train the forget images toward random wrong classes, then
repair on the retain set.

Each forget image gets one class drawn uniformly among the classes other than its own, fixed for
the run (seeded by `unlearn.seed`); a phase of CE on those labels is followed by a phase of CE on
the retain set. Classes are the k-means pseudo-labels of the teacher's embeddings, or identities
with `baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cure_jax.fields import Count, CountOrZero, Fraction, PositiveFloat
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
class RandomLabelConfig:
    """Random Labeling's settings."""

    epochs: Count = 5  # passes over the forget set with random other labels (2 move nothing here)
    repair_epochs: CountOrZero = 1  # passes over the retain set
    lr: PositiveFloat = 1e-3  # 1e-2 collapses the model
    momentum: Fraction = 0.9


def random_other_labels(labels_N: np.ndarray, *, num_classes: int, seed: int) -> np.ndarray:
    """A class for each row drawn uniformly among the `num_classes - 1` others.

    Returns:
      int32 [N], never equal to `labels_N`.

    Raises:
      ValueError: with fewer than two classes there is no other class.
    """
    if num_classes < 2:
        raise ValueError(f"random labels need two classes or more, got {num_classes}")
    draw = np.random.default_rng(seed).integers(0, num_classes - 1, size=len(labels_N))
    # Drawing from K - 1 values and skipping over the own label is uniform over the others.
    return (draw + (draw >= labels_N)).astype(np.int32)


@register("random_label", check=check_labels, reads=BASELINE_READS)
def run(context: UnlearnContext) -> Backbone:
    """`random_label.epochs` passes over the relabelled forget set, then `repair_epochs` over
    the retain set, both minimising CE."""
    config = context.config
    settings = config.random_label
    labels = make_labels(context)
    wrong = random_other_labels(labels.forget, num_classes=len(labels.centres),
                                seed=config.unlearn.seed)
    ce = classifier_loss(scale=labels.scale)
    return run_phases(context, tx=sgd(settings.lr, settings.momentum), centres_KxD=labels.centres,
                      phases=[Phase("relabel", ce, context.forget.source(wrong), settings.epochs),
                              Phase("repair", ce, context.retain.source(labels.retain),
                                    settings.repair_epochs)])
