"""Bad Teacher (SPEC section 5; Chundawat et al. 2023): the student copies an incompetent teacher
on the forget set and the competent one on the retain set.

The incompetent teacher is a randomly initialised backbone of the same architecture (seeded by
`unlearn.seed`; for a pretrained teacher, the file's architecture with fresh weights), in
evaluation mode. It is frozen, so its embeddings of the forget images (both
orientations) are computed once, before training, and kept in the method's folder: the step then
only runs the student. Data: the forget set plus a random `bad_teacher.retain_share` of the retain
set, shuffled together; every image carries the embedding of the teacher it must follow, and the
loss is one KL to that teacher's head distribution at temperature T, Adam.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import optax

from cure_jax.embeddings import cached_embeddings, make_embed_fn
from cure_jax.fields import Count, PositiveFloat, Probability
from cure_jax.losses.distill import distill_kl, head_logits
from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    BASELINE_READS,
    LossFn,
    Phase,
    check_labels,
    make_labels,
    run_phases,
)
from cure_jax.models.backbone import build_model, split_model
from data_pipelines.pipelines import ArraySource, TargetSource


@dataclasses.dataclass(frozen=True)
class BadTeacherConfig:
    """Bad Teacher's settings (the paper's)."""

    epochs: Count = 1  # passes over D_f plus the sampled share of D_r
    retain_share: Probability = 0.3
    lr: PositiveFloat = 1e-4  # Adam
    temperature: PositiveFloat = 1.0


def follow_loss(*, scale: float, temperature: float) -> LossFn:
    """`KL_T(followed teacher || student)` on a batch {"image", "target"}, where "target" is
    the embedding of whichever teacher the image must follow."""

    def loss_fn(student, centres_KxD, batch):
        student_logits = head_logits(student(batch["image"]), centres_KxD, scale=scale)
        target_logits = head_logits(batch["target"], centres_KxD, scale=scale)
        kl = distill_kl(target_logits, student_logits, temperature=temperature)
        return kl, {"kl": kl}

    return loss_fn


def incompetent_embeddings(context: UnlearnContext) -> tuple[np.ndarray, np.ndarray]:
    """Raw embeddings [N_f, D] of the forget images and of their mirrors by a randomly
    initialised backbone (evaluation mode), cached in the method's folder."""
    config = context.config
    images = context.forget.images
    model = build_model(config.model, num_classes=1, image_size=images.shape[1],
                        seed=config.unlearn.seed + 1, random_weights=True)
    graphs, params, batch_stats = split_model(model.backbone)
    source = ArraySource(images, np.zeros(len(images), np.int32))
    return cached_embeddings(context.folder / "incompetent_teacher.npz",
                             make_embed_fn(graphs.eval), params, batch_stats, source,
                             batch_size=config.eval.batch_size, mesh=context.mesh)


def check_request(config, num_forget: int, num_retain: int) -> None:
    check_labels(config, num_forget, num_retain)
    share = config.bad_teacher.retain_share
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"bad_teacher.retain_share={share} must be in [0, 1]")


@register("bad_teacher", check=check_request, reads=BASELINE_READS)
def run(context: UnlearnContext) -> Backbone:
    """`bad_teacher.epochs` passes over the forget set plus the sampled retain images."""
    config = context.config
    settings = config.bad_teacher
    labels = make_labels(context)
    bad, bad_flipped = incompetent_embeddings(context)
    retain = context.retain
    rng = np.random.default_rng(config.unlearn.seed)
    rows = np.sort(rng.choice(len(retain), size=int(round(settings.retain_share * len(retain))),
                              replace=False))
    # Every image carries the embedding of the teacher it must follow; the loss reads no label.
    source = TargetSource(np.concatenate([context.forget.images, retain.images[rows]]),
                          np.concatenate([bad, retain.teacher_emb[rows]]),
                          np.concatenate([bad_flipped, retain.teacher_emb_flipped[rows]]))
    return run_phases(context, tx=optax.adam(settings.lr), centres_KxD=labels.centres,
                      phases=[Phase("bad_teacher", follow_loss(
                          scale=labels.scale, temperature=settings.temperature), source,
                          settings.epochs)])
