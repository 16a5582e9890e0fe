"""The teacher: an IResNet (or a pretrained backbone) with a margin head trained on identity
labels.

The training step is a pure function `step(state, batch, root_key) -> (state, metrics)`, jitted
once with the state donated. Modules are split into a static graph and array states
(`nnx.split`); the step merges them back, so everything that changes lives in `TrainState`.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cure_jax import sharding
from cure_jax.loop import run_phase
from cure_jax.losses.margin import margin_loss
from cure_jax.models.backbone import Backbone, Graphs, build_model, split_model
from cure_jax.optim import lr_schedule, make_optimizer
from cure_jax.steps import make_step
from data_pipelines.pipelines import SubsetSource, train_dataset, train_iterator

if TYPE_CHECKING:
    from cure_jax.sections import ModelConfig


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

    def objective(params, batch_stats, state: TrainState, batch, key):
        model = nnx.merge(graph, params, batch_stats, copy=True)
        emb = model.backbone(batch["image"], dropout_key=key)
        cos = model.head(emb)
        loss = margin_loss(cos, batch["label"], kind=config.head, scale=config.scale,
                           margin=config.margin, straight_through=config.straight_through)
        accuracy = jnp.mean(jnp.argmax(cos, axis=-1) == batch["label"])
        metrics = {"accuracy": accuracy, "lr": schedule(state.step)}
        return loss, (nnx.state(model, nnx.BatchStat), metrics)

    return make_step(objective, tx)


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


def train_margin_model(*, config, optim, source, num_classes: int, folder: pathlib.Path, mesh,
                       desc: str) -> Teacher:
    """Trains a fresh backbone (or fine-tunes the pretrained one of `model.pretrained`) with a
    fresh margin head on the labels of `source`, resuming from the latest checkpoint under
    `folder`; a finished run is only restored.

    Args:
      config: the run's `Config` (`model`, `data.augment_shift`, `data.seed`, `run`).
      optim: the `OptimConfig` of this training (the teacher's recipe).
      source: random-access records {"image", "label"} with labels in [0, num_classes).
      num_classes: classes of the margin head.
      folder: where checkpoints and metrics go.
      mesh: the device mesh.
      desc: the name in messages and on the progress bar.
    """
    # Retraining follows the teacher's recipe too: the batch is always teacher.batch_size.
    sharding.check_batch_size(optim.batch_size, mesh, "teacher.batch_size")
    steps_per_epoch = len(source) // optim.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{desc}: {len(source)} training images are fewer than one batch of "
                         f"teacher.batch_size={optim.batch_size}")
    model = build_model(config.model, num_classes=num_classes,
                        image_size=config.data.image_size, seed=config.run.seed)
    graphs, params, batch_stats = split_model(model)
    tx = make_optimizer(optim, steps_per_epoch, params)
    state = sharding.replicate(init_state(params, batch_stats, tx), mesh)
    iterator = train_iterator(train_dataset(source, batch_size=optim.batch_size,
                                            seed=config.data.seed, shift=config.data.augment_shift))
    step_fn = make_train_step(graphs.train, tx, config.model, lr_schedule(optim, steps_per_epoch))
    state = run_phase(folder=folder, step_fn=step_fn, state=state, iterator=iterator,
                      num_steps=optim.epochs * steps_per_epoch,
                      root_key=jax.random.key(config.run.seed), mesh=mesh, run=config.run,
                      desc=desc, lr_key="teacher.lr")
    return Teacher(graphs, state.params, state.batch_stats)


def train_teacher(config, data, workdir, mesh) -> Teacher:
    """Trains the teacher on the training records, resuming from its latest checkpoint; a
    finished teacher is reused. It lives under `workdir/teacher`."""
    return train_margin_model(
        config=config, optim=config.teacher,
        source=SubsetSource(data.records, data.train_indices), num_classes=data.num_classes,
        folder=pathlib.Path(workdir) / "teacher", mesh=mesh, desc="teacher")
