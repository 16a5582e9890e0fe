"""The teacher: an IResNet with a margin head trained on identity labels.

The training step is a pure function `step(state, batch, root_key) -> (state, metrics)`, jitted
once with the state donated. Modules are split into a static graph and array states
(`nnx.split`); the step merges them back, so everything that changes lives in `TrainState`.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cure_jax import sharding
from cure_jax.checkpointing import Checkpointer
from cure_jax.config import ModelConfig, OptimConfig
from cure_jax.loop import run_loop, truncate_log
from cure_jax.losses.margin import margin_loss
from cure_jax.models.heads import CosineHead, FaceModel
from cure_jax.models.iresnet import IResNet
from data_pipelines.pipelines import SubsetSource, train_dataset, train_iterator


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimiser steps taken
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState


class Graphs(NamedTuple):
    """Static module structure in training mode and in evaluation mode (same arrays)."""

    train: nnx.GraphDef
    eval: nnx.GraphDef


def build_model(config: ModelConfig, *, num_classes: int, image_size: int, seed: int) -> FaceModel:
    rngs = nnx.Rngs(params=seed)
    backbone = IResNet(config.depth, width=config.width, input_size=image_size,
                       embedding_dim=config.embedding_dim, dropout=config.dropout, rngs=rngs)
    return FaceModel(backbone, CosineHead(config.embedding_dim, num_classes, rngs=rngs))


def split_model(model: nnx.Module) -> tuple[Graphs, nnx.State, nnx.State]:
    """(graphs, params, batch_stats) of a module with only Param and BatchStat variables."""
    graph_train, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    eval_view = nnx.view(model, use_running_average=True, deterministic=True)
    graph_eval = nnx.split(eval_view, nnx.Param, nnx.BatchStat)[0]
    return Graphs(graph_train, graph_eval), params, batch_stats


def lr_schedule(config: OptimConfig, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up, then either the base rate multiplied by `decay` at each milestone epoch
    ("step") or a cosine decay to zero at the last epoch ("cosine")."""
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        after = optax.cosine_decay_schedule(config.lr, max(config.epochs * steps_per_epoch
                                                           - warmup, 1))
    else:
        boundaries = {int(m * steps_per_epoch) - warmup: config.decay for m in config.milestones}
        after = optax.piecewise_constant_schedule(config.lr, boundaries)
    if warmup <= 0:
        return after
    ramp = optax.linear_schedule(config.lr / max(warmup, 1), config.lr, warmup)
    return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(config: OptimConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (PyTorch's `SGD(weight_decay=...)`, as the
    papers), or AdamW with decoupled weight decay."""
    schedule = lr_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )


def init_state(params: nnx.State, batch_stats: nnx.State,
               tx: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))


def make_train_step(graph: nnx.GraphDef, tx: optax.GradientTransformation,
                    config: ModelConfig, schedule: optax.Schedule):
    """The jitted teacher step: margin softmax on identity labels, one SGD update."""

    def loss_fn(params, batch_stats, batch, key):
        model = nnx.merge(graph, params, batch_stats, copy=True)
        emb = model.backbone(batch["image"], dropout_key=key)
        cos = model.head(emb)
        loss = margin_loss(cos, batch["label"], kind=config.head, scale=config.scale,
                           margin=config.margin, straight_through=config.straight_through)
        accuracy = jnp.mean(jnp.argmax(cos, axis=-1) == batch["label"])
        return loss, (nnx.state(model, nnx.BatchStat), accuracy)

    def step(state: TrainState, batch: dict, root_key: jax.Array):
        key = jax.random.fold_in(root_key, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (batch_stats, accuracy)), grads = grad_fn(state.params, state.batch_stats, batch,
                                                         key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": accuracy, "lr": schedule(state.step)}
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=0)


class Teacher(NamedTuple):
    """The trained backbone and margin head (graphs of the whole `FaceModel`)."""

    graphs: Graphs
    params: nnx.State
    batch_stats: nnx.State

    def class_centres(self) -> jax.Array:
        """The margin head's class centres W [C, D] (raw; only their direction matters)."""
        return self.params["head"]["centres"][...]

    def backbone(self) -> tuple[Graphs, Backbone]:
        """The backbone alone: its graphs and arrays (what unlearning starts from)."""
        model = nnx.merge(self.graphs.train, self.params, self.batch_stats)
        graphs, params, batch_stats = split_model(model.backbone)
        return graphs, Backbone(params, batch_stats)


class Backbone(NamedTuple):
    """The arrays of a backbone (teacher or student)."""

    params: nnx.State
    batch_stats: nnx.State


def train_teacher(config, data, workdir, mesh) -> Teacher:
    """Trains the teacher, resuming from its latest checkpoint; a finished teacher is reused.

    Args:
      config: the run's `Config`.
      data: `FaceData` (training records with labels).
      workdir: the run folder; the teacher lives under `workdir/teacher`.
      mesh: the device mesh.
    """
    optim = config.teacher
    sharding.check_batch_size(optim.batch_size, mesh, "teacher.batch_size")
    train_source = SubsetSource(data.records, data.train_indices)
    steps_per_epoch = len(train_source) // optim.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_source)} training images are fewer than one batch of "
                         f"teacher.batch_size={optim.batch_size}")
    num_steps = optim.epochs * steps_per_epoch
    model = build_model(config.model, num_classes=data.num_classes,
                        image_size=config.data.image_size, seed=config.run.seed)
    graphs, params, batch_stats = split_model(model)
    schedule = lr_schedule(optim, steps_per_epoch)
    tx = make_optimizer(optim, steps_per_epoch)
    state = sharding.replicate(init_state(params, batch_stats, tx), mesh)

    folder = pathlib.Path(workdir) / "teacher"
    checkpointer = Checkpointer(folder / "checkpoints", max_to_keep=config.run.max_to_keep)
    iterator = train_iterator(train_dataset(train_source, batch_size=optim.batch_size,
                                            seed=config.data.seed, shift=config.data.augment_shift))
    log_path = folder / "metrics.jsonl"
    latest = checkpointer.latest_step()
    if latest is not None:
        state, extra = checkpointer.restore(latest, state)
        iterator.set_state(extra["iterator"])
        truncate_log(log_path, latest)
        print(f"teacher: resuming from step {latest} of {num_steps} ({folder / 'checkpoints'})")
    step_fn = make_train_step(graphs.train, tx, config.model, schedule)
    try:
        state = run_loop(step_fn=step_fn, state=state, root_key=jax.random.key(config.run.seed),
                         iterator=iterator, num_steps=num_steps, mesh=mesh,
                         checkpointer=checkpointer, log_path=log_path,
                         log_every=config.run.log_every,
                         checkpoint_every=config.run.checkpoint_every,
                         progress=config.run.progress, desc="teacher",
                         crash_at_step=config.run.crash_at_step)
    finally:
        # Also on an error (a non-finite loss): pending saves finish, threads stop.
        checkpointer.close()
    return Teacher(graphs, state.params, state.batch_stats)
