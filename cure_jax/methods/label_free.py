"""What the baseline methods share (SPEC section 5): labels without identity labels, the fixed
centroid head, one generic jitted student step, and `run_phases`, the one entry point through
which a baseline runs its phases.

Label-free by default: k-means over the teacher's unit embeddings of retain + forget images gives
`baselines.clusters` pseudo-classes; their unit centroids `c` are a fixed classifier with logits
`s * cos(z, c)` (`s = baselines.scale`, else `model.scale`), so that the teacher predicts each
image's pseudo-label. With
`baselines.labels=true` (and only then) the context carries `Supervision`: identity labels and the
teacher's margin-head centres replace both.

A baseline module then reads like its paper: its losses (pure functions of the student and a
batch), the data each phase passes over, and one call to `run_phases`.

Shape legend: B batch, D embedding dimension, K classes (pseudo or true), N images.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cure_jax import clustering, sharding
from cure_jax.fields import Count, NonNegativeFloat, Range
from cure_jax.loop import run_phase
from cure_jax.losses.common import l2_normalize
from cure_jax.losses.distill import cross_entropy, head_logits
from cure_jax.methods.base import UnlearnContext, check_batches
from cure_jax.models.backbone import Backbone, Graphs
from cure_jax.optim import keep_frozen
from cure_jax.steps import Prepare, make_step
from data_pipelines.pipelines import TargetSource, ZipIterator, target_dataset, train_iterator


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """What every baseline shares: how it gets labels without identity labels."""

    # "pseudo": k-means pseudo-labels over the teacher's embeddings of retain + forget images and a
    # fixed centroid head `scale * cos(z, c)` replace identity labels and the identity classifier.
    # "true": the supervised originals (identity labels and the teacher's margin-head centres).
    labels: Literal["pseudo", "true"] = "pseudo"
    # K_all of the pseudo-labels (as many as the default has identities).
    clusters: Annotated[int, Range(2)] = 200
    kmeans_iters: Count = 30
    kmeans_restarts: Count = 2
    # k-means seeding, as `cure.kmeans_init`: k-means|| is cheaper from K in the hundreds.
    kmeans_init: Literal["k-means++", "k-means||"] = "k-means++"
    # Logit scale s of the pseudo-label head (0: `model.scale`). A teacher whose clusters are
    # tight gives cross-entropies that vanish at a large s (1e-7 on the SFace teacher at s = 32):
    # every gradient of a cross-entropy loss vanishes with them and gradient ascent, NegGrad and
    # fine-tuning move nothing. `make_labels` warns when that happens.
    scale: NonNegativeFloat = 0.0


# What a baseline reads besides its own section: the student batch and the label settings.
BASELINE_READS = ("student.batch_size", "baselines.")
# What the labels alone depend on (retraining reads them, not the head's scale).
LABEL_KEYS = ("baselines.labels", "baselines.clusters", "baselines.kmeans_")
# Below this median cross-entropy of the teacher on the forget images' pseudo-labels, the
# gradients of a cross-entropy loss are too small to move the student in a few hundred steps:
# the SFace teacher at s = 32 (under 1e-7) did not move; the tests' tiny teacher (4e-6) does.
SATURATED_CE = 1e-6


class Labels(NamedTuple):
    """The classes every baseline trains with.

    Attributes:
      forget: int32 [N_f] class of each forget image.
      retain: int32 [N_r] class of each retain image.
      centres: float32 [K, D] unit class vectors of the fixed head.
      scale: logit scale s of the head.
    """

    forget: np.ndarray
    retain: np.ndarray
    centres: np.ndarray
    scale: float


def make_labels(context: UnlearnContext, *, check_head: bool = True) -> Labels:
    """Pseudo-labels and centroid head (label-free), or the supervision's when present.

    Spherical k-means on the unit teacher embeddings of retain + forget images, seeded by
    `unlearn.seed`; each image's label is its nearest centroid, which the teacher's logits then
    rank first. With `check_head`, prints a warning when the teacher's cross-entropy on the
    forget images is saturated at the head's scale (`SATURATED_CE`).
    """
    if context.supervision is not None:
        sup = context.supervision
        centres = np.asarray(l2_normalize(jnp.asarray(sup.class_centres, jnp.float32)))
        return Labels(np.asarray(sup.forget_labels, np.int32),
                      np.asarray(sup.retain_labels, np.int32), centres, float(sup.scale))
    config = context.config.baselines
    unit = l2_normalize(jnp.asarray(np.concatenate([context.retain.teacher_emb,
                                                    context.forget.teacher_emb]), jnp.float32))
    result = clustering.kmeans(jax.random.key(context.config.unlearn.seed), unit,
                               num_clusters=config.clusters, num_iters=config.kmeans_iters,
                               num_restarts=config.kmeans_restarts, cosine=True,
                               init=config.kmeans_init)
    labels = np.asarray(clustering.assign(unit, result.centroids))
    num_retain = len(context.retain)
    scale = float(config.scale or context.config.model.scale)
    pseudo = Labels(labels[num_retain:], labels[:num_retain], np.asarray(result.centroids), scale)
    median_ce = teacher_median_ce(context.forget.teacher_emb, pseudo.forget, pseudo.centres,
                                  scale)
    if check_head and median_ce < SATURATED_CE:
        print(f"warning: the teacher's median cross-entropy on the forget images' pseudo-labels "
              f"is {median_ce:.1e} at the head's scale {scale:g}: cross-entropy gradients "
              "vanish and the student will barely move; lower baselines.scale (the default "
              "teacher's is 4e-3 at 32)", file=sys.stderr)
    return pseudo


def teacher_median_ce(teacher_emb_NxD, labels_N, centres_KxD, scale: float) -> float:
    """The median over images of the teacher's cross-entropy `CE(s cos(t, c), label)`."""
    logits = head_logits(jnp.asarray(teacher_emb_NxD, jnp.float32),
                         jnp.asarray(centres_KxD, jnp.float32), scale=scale)
    return float(jnp.median(optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(labels_N, jnp.int32))))


def check_labels(config, num_forget: int, num_retain: int) -> None:
    """Raises ValueError when a student batch or the pseudo-label clustering cannot be made."""
    check_batches(config, num_forget, num_retain)
    clusters = config.baselines.clusters
    if config.baselines.labels == "pseudo" and clusters > num_forget + num_retain:
        raise ValueError(f"baselines.clusters={clusters} is more than the "
                         f"{num_forget + num_retain} forget and retain images; lower it")


# `loss_fn(student, centres_KxD, batch) -> (loss, {name: scalar})`; `student(images)` gives raw
# embeddings.
LossFn = Callable[[nnx.Module, jax.Array, dict], tuple[jax.Array, dict]]


def classifier_loss(*, scale: float, sign: float = 1.0) -> LossFn:
    """`sign * CE(s * cos(z, c), label)` on a batch {"image", "label"}: fine-tuning (+1) or
    gradient ascent (-1). The metrics report the cross-entropy itself as "ce"."""

    def loss_fn(student, centres_KxD, batch):
        ce = cross_entropy(head_logits(student(batch["image"]), centres_KxD, scale=scale),
                           batch["label"])
        return sign * ce, {"ce": ce}

    return loss_fn


# The student step.


class StudentState(NamedTuple):
    step: jax.Array  # int32 scalar, counted from 0 in each phase
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    centres: jax.Array  # [K, D] unit, the fixed head


def initial_state(context: UnlearnContext, tx: optax.GradientTransformation,
                  centres_KxD: np.ndarray) -> StudentState:
    """The student as a copy of the teacher (its own buffers: the state is donated)."""
    params = jax.tree.map(jnp.copy, context.teacher.params)
    state = StudentState(jnp.zeros((), jnp.int32), params,
                         jax.tree.map(jnp.copy, context.teacher.batch_stats), tx.init(params),
                         jnp.asarray(centres_KxD, jnp.float32))
    return sharding.replicate(state, context.mesh)


def make_student_step(graphs: Graphs, tx: optax.GradientTransformation, loss_fn: LossFn, *,
                      batch_norm: str = "frozen", prepare: Prepare | None = None):
    """The jitted step `step(state, batch, root_key) -> (state, metrics)` minimising `loss_fn`
    against the fixed head `state.centres`, state donated.

    With `batch_norm="frozen"` the student runs its evaluation graph (running statistics, kept);
    with "train" it normalises with batch statistics and updates the running ones.
    """
    frozen = batch_norm == "frozen"
    graph = graphs.eval if frozen else graphs.train

    def objective(params, batch_stats, state: StudentState, batch, key):
        del key  # the student has no dropout; UNSIR's noise draws its key in `prepare`
        student = nnx.merge(graph, params, batch_stats, copy=True)
        loss, terms = loss_fn(student, state.centres, batch)
        new_stats = batch_stats if frozen else nnx.state(student, nnx.BatchStat)
        return loss, (new_stats, terms)

    return make_step(objective, tx, prepare=prepare)


# Phases.


def pass_steps(num_images: int, batch_size: int, epochs: float) -> int:
    """Steps of `epochs` passes over `num_images` in full batches (at least one, unless
    `epochs` is 0)."""
    if epochs <= 0:
        return 0
    return max(1, int(round(epochs * (num_images // batch_size))))


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a baseline: `epochs` passes minimising `loss` over batches of `data`.

    Attributes:
      name: the phase's folder under the method's folder (and its progress bar).
      loss: the loss; phases that share a loss object (and `prepare`) share one compiled step.
      data: one source of batches {"image", "target", "index"(, "label")}, or named sources
        advanced together (each step gets {name: batch}).
      epochs: passes over `data`, over its first source when there are several; a phase of 0
        epochs is skipped.
      prepare: work on the batch before the gradient (UNSIR's noise).
    """

    name: str
    loss: LossFn
    data: TargetSource | dict[str, TargetSource]
    epochs: float
    prepare: Prepare | None = None


def phase_seed(context: UnlearnContext, index: int) -> int:
    """A distinct data and key seed for each phase of a method."""
    return context.config.unlearn.seed * 1000 + index


def phase_batches(data: TargetSource | dict[str, TargetSource], *, batch_size: int, seed: int):
    """Endless shuffled batches of one source, or of several advanced together (seeds `seed`,
    `seed + 1`, ... in order)."""
    if isinstance(data, TargetSource):
        return train_iterator(target_dataset(data, batch_size=batch_size, seed=seed))
    return ZipIterator(**{name: train_iterator(target_dataset(source, batch_size=batch_size,
                                                              seed=seed + offset))
                          for offset, (name, source) in enumerate(data.items())})


def run_phases(context: UnlearnContext, *, tx: optax.GradientTransformation,
               centres_KxD: np.ndarray, phases: list[Phase]) -> Backbone:
    """Runs `phases` one after the other from the teacher, with one optimiser whose state
    carries over, and returns the student.

    Each phase resumes on its own (`loop.run_phase` under `context.folder / phase.name`), so a
    killed multi-phase run redoes no finished phase. Phase `i` draws its batches and keys from
    `phase_seed(context, i)`.
    """
    config = context.config
    batch_size = config.student.batch_size
    tx = keep_frozen(tx, context.teacher.params)  # layers kept as imported stay so
    state = initial_state(context, tx, centres_KxD)
    steps = {}
    for index, phase in enumerate(phases):
        first = phase.data if isinstance(phase.data, TargetSource) else next(
            iter(phase.data.values()))
        num_steps = pass_steps(len(first), batch_size, phase.epochs)
        if num_steps == 0:
            continue
        compiled = (phase.loss, phase.prepare)
        if compiled not in steps:
            steps[compiled] = make_student_step(context.graphs, tx, phase.loss,
                                        batch_norm=config.unlearn.batch_norm,
                                        prepare=phase.prepare)
        seed = phase_seed(context, index)
        state = run_phase(
            folder=context.folder / phase.name, step_fn=steps[compiled],
            state=sharding.replicate(state._replace(step=jnp.zeros((), jnp.int32)),
                                     context.mesh),
            iterator=phase_batches(phase.data, batch_size=batch_size, seed=seed),
            num_steps=num_steps, root_key=jax.random.key(seed), mesh=context.mesh,
            run=config.run, desc=f"{context.folder.name}/{phase.name}",
            lr_key=f"{context.folder.name}.lr")
    return Backbone(state.params, state.batch_stats)
