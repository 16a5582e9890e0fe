"""What the baseline methods share (SPEC section 5): labels without identity labels, the fixed
centroid head, their losses, labelled batches, one generic jitted student step and phases that
resume.

Label-free by default: k-means over the teacher's unit embeddings of retain + forget images gives
`baselines.clusters` pseudo-classes; their unit centroids `c` are a fixed classifier with logits
`s * cos(z, c)` (`s = model.scale`), so that the teacher predicts each image's pseudo-label. With
`baselines.labels=true` (and only then) the context carries `Supervision`: identity labels and the
teacher's margin-head centres replace both.

Shape legend: B batch, D embedding dimension, K classes (pseudo or true), N images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cure_jax import clustering, sharding
from cure_jax.checkpointing import Checkpointer
from cure_jax.loop import run_loop, truncate_log
from cure_jax.losses.common import l2_normalize
from cure_jax.methods.base import UnlabelledSet, UnlearnContext, check_batches
from cure_jax.models.backbone import Backbone, Graphs
from data_pipelines.pipelines import normalize, train_iterator


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


def make_labels(context: UnlearnContext) -> Labels:
    """Pseudo-labels and centroid head (label-free), or the supervision's when present.

    Spherical k-means on the unit teacher embeddings of retain + forget images, seeded by
    `unlearn.seed`; each image's label is its nearest centroid, which the teacher's logits then
    rank first.
    """
    if context.supervision is not None:
        sup = context.supervision
        centres = np.asarray(l2_normalize(jnp.asarray(sup.class_centres, jnp.float32)))
        return Labels(np.asarray(sup.forget_labels, np.int32),
                      np.asarray(sup.retain_labels, np.int32), centres, float(sup.scale))
    config = context.config.baselines
    unit = l2_normalize(jnp.asarray(np.concatenate([context.retain.teacher,
                                                    context.forget.teacher]), jnp.float32))
    result = clustering.kmeans(jax.random.key(context.config.unlearn.seed), unit,
                               num_clusters=config.clusters, num_iters=config.kmeans_iters,
                               num_restarts=config.kmeans_restarts, cosine=True)
    labels = np.asarray(clustering.assign(unit, result.centroids))
    num_retain = len(context.retain)
    return Labels(labels[num_retain:], labels[:num_retain], np.asarray(result.centroids),
                  float(context.config.model.scale))


def check_labels(config, num_forget: int, num_retain: int) -> None:
    """Raises ValueError when a student batch or the pseudo-label clustering cannot be made."""
    check_batches(config, num_forget, num_retain)
    clusters = config.baselines.clusters
    if config.baselines.labels == "pseudo" and clusters > num_forget + num_retain:
        raise ValueError(f"baselines.clusters={clusters} is more than the "
                         f"{num_forget + num_retain} forget and retain images; lower it")


# Losses: pure functions of arrays.

# `loss_fn(student, centres_KxD, batch) -> (loss, {name: scalar})`; `student(images)` gives raw
# embeddings.
LossFn = Callable[[nnx.Module, jax.Array, dict], tuple[jax.Array, dict]]


def head_logits(emb_BxD: jax.Array, centres_KxD: jax.Array, *, scale: float) -> jax.Array:
    """Logits [B, K] of the fixed head: `scale * cos(e, c)` for raw embeddings `e` and unit
    centres `c`."""
    return scale * (l2_normalize(emb_BxD) @ centres_KxD.T)


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B))


def distill_kl(teacher_BxK: jax.Array, student_BxK: jax.Array, *,
               temperature: float) -> jax.Array:
    """`T^2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))`, summed over classes (Hinton's
    distillation, as SCRUB and Bad Teacher use it).

    Args:
      teacher_BxK: logits of the model to match (no gradient flows into them).
      student_BxK: logits of the student.
      temperature: T.

    Returns:
      Scalar.
    """
    teacher_log = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_BxK) / temperature)
    # log_softmax on both sides, not log(softmax): exact where a probability underflows to 0.
    student_log = jax.nn.log_softmax(student_BxK / temperature)
    kl_B = jnp.sum(jnp.exp(teacher_log) * (teacher_log - student_log), axis=-1)
    return temperature**2 * jnp.mean(kl_B)


def classifier_loss(*, scale: float, sign: float = 1.0) -> LossFn:
    """`sign * CE(s * cos(z, c), label)` on a batch {"image", "label"}: fine-tuning (+1) or
    gradient ascent (-1). The metrics report the cross-entropy itself as "ce"."""

    def loss_fn(student, centres_KxD, batch):
        ce = cross_entropy(head_logits(student(batch["image"]), centres_KxD, scale=scale),
                           batch["label"])
        return sign * ce, {"ce": ce}

    return loss_fn


# Labelled batches.


class LabelledSource:
    """Images with the teacher's embedding and a class for each orientation.

    Records are {"image", "target", "target_flipped", "label", "label_flipped"}; a label that
    does not depend on the orientation is given once (`labels_flipped=None`).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, targets_flipped: np.ndarray,
                 labels: np.ndarray, labels_flipped: np.ndarray | None = None):
        if not len(images) == len(targets) == len(targets_flipped) == len(labels):
            raise ValueError(f"{len(images)} images, {len(targets)} and {len(targets_flipped)} "
                             f"targets, {len(labels)} labels")
        self.images = images
        self.targets = np.asarray(targets, np.float32)
        self.targets_flipped = np.asarray(targets_flipped, np.float32)
        self.labels = np.asarray(labels, np.int32)
        self.labels_flipped = self.labels if labels_flipped is None else np.asarray(
            labels_flipped, np.int32)

    @classmethod
    def of(cls, unlabelled: UnlabelledSet, labels: np.ndarray,
           labels_flipped: np.ndarray | None = None) -> LabelledSource:
        return cls(unlabelled.images, unlabelled.teacher, unlabelled.teacher_flipped, labels,
                   labels_flipped)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "target": self.targets[index],
                "target_flipped": self.targets_flipped[index], "label": self.labels[index],
                "label_flipped": self.labels_flipped[index]}


def _labelled_record(record: dict, rng: np.random.Generator) -> dict:
    # Image, target and label flip together: the target is the teacher's view of this image.
    suffix = "_flipped" if rng.random() < 0.5 else ""
    image = record["image"][:, ::-1] if suffix else record["image"]
    return {"image": normalize(image), "target": record["target" + suffix],
            "label": record["label" + suffix]}


def labelled_dataset(source: LabelledSource, *, batch_size: int, seed: int) -> grain.MapDataset:
    """Endless shuffled batches {"image", "target", "label"} with random horizontal flips."""
    if len(source) < batch_size:
        raise ValueError(f"{len(source)} images are fewer than one batch ({batch_size})")
    return (grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
            .random_map(_labelled_record).batch(batch_size, drop_remainder=True))


def labelled_iterator(source: LabelledSource, *, batch_size: int, seed: int):
    return train_iterator(labelled_dataset(source, batch_size=batch_size, seed=seed))


# The student step and its phases.


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


# `prepare(state, batch, key) -> batch`: work before the gradient (UNSIR's noise).
Prepare = Callable[[StudentState, dict, jax.Array], dict]


def make_step(graphs: Graphs, tx: optax.GradientTransformation, loss_fn: LossFn, *,
              batch_norm: str = "frozen", prepare: Prepare | None = None):
    """The jitted step `step(state, batch, root_key) -> (state, metrics)`, state donated.

    With `batch_norm="frozen"` the student runs its evaluation graph (running statistics, kept);
    with "train" it normalises with batch statistics and updates the running ones.
    """
    frozen = batch_norm == "frozen"
    graph = graphs.eval if frozen else graphs.train

    def objective(params, batch_stats, centres, batch):
        student = nnx.merge(graph, params, batch_stats, copy=True)
        loss, terms = loss_fn(student, centres, batch)
        new_stats = batch_stats if frozen else nnx.state(student, nnx.BatchStat)
        return loss, (new_stats, terms)

    def step(state: StudentState, batch: dict, root_key: jax.Array):
        if prepare is not None:
            batch = prepare(state, batch, jax.random.fold_in(root_key, state.step))
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, (batch_stats, terms)), grads = grad_fn(state.params, state.batch_stats,
                                                      state.centres, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state), {"loss": loss, **terms}

    return jax.jit(step, donate_argnums=0)


def sgd(lr: float, momentum: float) -> optax.GradientTransformation:
    """Constant-rate SGD with momentum, the baselines' optimiser."""
    return optax.sgd(lr, momentum=momentum or None)


def pass_steps(num_images: int, batch_size: int, epochs: float) -> int:
    """Steps of `epochs` passes over `num_images` in full batches (at least one, unless
    `epochs` is 0)."""
    if epochs <= 0:
        return 0
    return max(1, int(round(epochs * (num_images // batch_size))))


def run_phase(context: UnlearnContext, *, phase: str, step_fn, state, iterator, num_steps: int,
              seed: int):
    """Runs one phase of `num_steps` steps from `state` under `context.folder / phase`.

    A phase whose checkpoints exist resumes from the latest (a finished one only restores its
    final state), so a killed multi-phase run redoes no finished phase.

    Args:
      phase: the phase's folder name (also the progress bar's).
      step_fn: the phase's jitted step.
      state: the state the phase starts from, a NamedTuple with a `step` field (restarted at
        0); the phase returns the same structure.
      iterator: the phase's batches; its state is checkpointed with the model.
      num_steps: steps of the phase.
      seed: folded into the per-step keys.
    """
    config = context.config
    folder = context.folder / phase
    state = sharding.replicate(state._replace(step=jnp.zeros((), jnp.int32)), context.mesh)
    checkpointer = Checkpointer(folder / "checkpoints", max_to_keep=config.run.max_to_keep)
    log_path = folder / "metrics.jsonl"
    latest = checkpointer.latest_step()
    if latest is not None:
        state, extra = checkpointer.restore(latest, state)
        iterator.set_state(extra["iterator"])
        truncate_log(log_path, latest)
        if latest < num_steps:
            print(f"{phase}: resuming from step {latest} of {num_steps}")
    try:
        return run_loop(step_fn=step_fn, state=state, root_key=jax.random.key(seed),
                        iterator=iterator, num_steps=num_steps, mesh=context.mesh,
                        checkpointer=checkpointer, log_path=log_path,
                        log_every=config.run.log_every,
                        checkpoint_every=config.run.checkpoint_every,
                        progress=config.run.progress, desc=f"{context.folder.name}/{phase}",
                        crash_at_step=config.run.crash_at_step)
    finally:
        # Also on an error (a non-finite loss): pending saves finish, threads stop.
        checkpointer.close()


def phase_seed(context: UnlearnContext, index: int) -> int:
    """A distinct data and key seed for each phase of a method."""
    return context.config.unlearn.seed * 1000 + index


def backbone_of(state: StudentState) -> Backbone:
    return Backbone(state.params, state.batch_stats)


def cross_entropy_phases(context: UnlearnContext, *, settings, labels: Labels,
                         phases: list[tuple[str, LabelledSource, float]],
                         sign: float = 1.0) -> Backbone:
    """The run of the classifier baselines: `phases` one after the other, each `(folder name,
    labelled images, epochs)`, all minimising `sign * CE` against the fixed head with one SGD
    optimiser (`settings.lr`, `settings.momentum`) and one compiled step. A phase of 0 epochs
    is skipped; each resumes on its own (`run_phase`)."""
    config = context.config
    batch_size = config.student.batch_size
    tx = sgd(settings.lr, settings.momentum)
    step = make_step(context.graphs, tx, classifier_loss(scale=labels.scale, sign=sign),
                     batch_norm=config.unlearn.batch_norm)
    state = initial_state(context, tx, labels.centres)
    for index, (phase, source, epochs) in enumerate(phases):
        if epochs <= 0:
            continue
        seed = phase_seed(context, index)
        state = run_phase(context, phase=phase, step_fn=step, state=state,
                          iterator=labelled_iterator(source, batch_size=batch_size, seed=seed),
                          num_steps=pass_steps(len(source), batch_size, epochs), seed=seed)
    return backbone_of(state)
