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
from cure_jax.config import ModelConfig
from cure_jax.loop import run_loop, truncate_log
from cure_jax.losses.margin import margin_loss
from cure_jax.models.backbone import Backbone, Graphs, build_model, split_model
from cure_jax.optim import lr_schedule, make_optimizer
from data_pipelines.pipelines import SubsetSource, train_dataset, train_iterator


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimiser steps taken
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState


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
