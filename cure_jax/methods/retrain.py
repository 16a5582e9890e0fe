"""Retraining from scratch on the retain set (SPEC section 5): the gold standard every approximate
method should approach.

A fresh model (seeded by `run.seed`) with a margin head over the classes trains on the retain
images only, with the teacher's recipe (`teacher.train_margin_model`: `teacher.*` optimiser and
schedule, `model.*` head, `data.augment_shift`); `retrain.epochs` (0: the teacher's) sets its
length. Classes are the k-means pseudo-labels of the teacher's embeddings (so no identity label is
read), or identities with `baselines.labels=true`. Its backbone is returned and its head
discarded. Its embedding space is its own, so the teacher's class centres cannot score it: its
evaluation keeps verification, retrieval and layer distance and leaves out the head-scored metrics
(accuracies, UES, Table 2, membership inference).
"""

from __future__ import annotations

import dataclasses

from cure_jax.fields import CountOrZero
from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import LABEL_KEYS, make_labels
from cure_jax.teacher import train_margin_model
from data_pipelines.pipelines import ArraySource


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Retraining from scratch on the retain set uses the teacher's recipe (`teacher.*`) and the
    labels of `baselines.labels`."""

    epochs: CountOrZero = 0  # 0: the teacher's number of epochs


def retrain_optim(config):
    """The teacher's optimiser settings, with `retrain.epochs` when it is set."""
    epochs = config.retrain.epochs
    return config.teacher if epochs == 0 else dataclasses.replace(config.teacher, epochs=epochs)


def check_request(config, num_forget: int, num_retain: int) -> None:
    """Raises ValueError when the retain set cannot fill one teacher batch or be clustered."""
    del num_forget
    batch_size = config.teacher.batch_size
    if num_retain < batch_size:
        raise ValueError(f"the retain set has {num_retain} images, fewer than one batch of "
                         f"teacher.batch_size={batch_size}; lower it")
    if config.retrain.epochs < 0:
        raise ValueError(f"retrain.epochs={config.retrain.epochs} must be >= 0")
    clusters = config.baselines.clusters
    if config.baselines.labels == "pseudo" and clusters > num_retain:
        raise ValueError(f"baselines.clusters={clusters} is more than the {num_retain} retain "
                         "images; lower it")


@register("retrain", check=check_request, reads=LABEL_KEYS, own_embedding_space=True)
def run(context: UnlearnContext) -> Backbone:
    """Trains a fresh model on the retain set, resuming from its latest checkpoint."""
    labels = make_labels(context, check_head=False)  # its own margin head, not the fixed one
    model = train_margin_model(
        config=context.config, optim=retrain_optim(context.config),
        source=ArraySource(context.retain.images, labels.retain),
        num_classes=len(labels.centres), folder=context.folder / "retrain", mesh=context.mesh,
        desc="retrain")
    return model.backbone()[1]
