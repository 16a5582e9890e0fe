"""What the benchmarks in tools/ share: timing a step, and the steps built on random images."""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax import optim, sharding, teacher
from cure_jax.methods import cure
from cure_jax.methods.base import UnlabelledSet, UnlearnContext
from cure_jax.models.backbone import build_model, split_model


def timed_step(step, state, batch, steps: int):
    """(compile seconds, seconds per step, final state) of `state, metrics = step(state, batch,
    key)` run `steps` times after one compiling call (the step may donate its state)."""
    key = jax.random.key(0)
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    return compile_s, (time.perf_counter() - start) / steps, state


class RandomSetup:
    """The config's model, freshly initialised, and random images of its input size.

    The steps below are built from it as training builds them (same optimiser, schedule and
    frozen layers); their batches hold random data, which costs what real data costs.
    """

    def __init__(self, config, *, seed: int = 0):
        self.config = config
        self.mesh = sharding.make_mesh(config.run.num_devices)
        self.rng = np.random.default_rng(seed)
        size = config.data.image_size
        model = build_model(config.model, num_classes=config.data.num_identities,
                            image_size=size, seed=seed)
        self.graphs, self.params, self.batch_stats = split_model(model)
        self.images = self.rng.uniform(
            -1, 1, (config.teacher.batch_size, size, size, 3)).astype(np.float32)

    def teacher_step(self):
        """(step, state, batch) of the teacher step at the config's batch size. The step
        donates its state: build the CURE context first when both run."""
        config, classes = self.config, self.config.data.num_identities
        tx = optim.make_optimizer(config.teacher, 100, self.params)  # frozen layers as trained
        step = teacher.make_train_step(self.graphs.train, tx, config.model,
                                       optim.lr_schedule(config.teacher, 100))
        labels = self.rng.integers(0, classes, len(self.images)).astype(np.int32)
        batch = sharding.shard_batch({"image": self.images, "label": labels}, self.mesh)
        state = sharding.replicate(teacher.init_state(self.params, self.batch_stats, tx),
                                   self.mesh)
        return step, state, batch

    def cure_context(self, folder: pathlib.Path, *, num_forget: int = 640,
                     num_retain: int = 2000) -> UnlearnContext:
        """An unlearning context over random forget and retain sets, with its own copy of the
        backbone (the teacher step donates the original)."""
        size, dim = self.config.data.image_size, self.config.model.embedding_dim
        backbone_graphs, backbone = teacher.Teacher(self.graphs, *jax.tree.map(
            jnp.copy, (self.params, self.batch_stats))).backbone()

        def unlabelled(count):
            return UnlabelledSet(
                self.rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
                self.rng.normal(size=(count, dim)).astype(np.float32),
                self.rng.normal(size=(count, dim)).astype(np.float32))

        return UnlearnContext(config=self.config, graphs=backbone_graphs, teacher=backbone,
                              forget=unlabelled(num_forget), retain=unlabelled(num_retain),
                              mesh=self.mesh, folder=folder)

    def cure_step(self, context: UnlearnContext, per_side: int):
        """(step, state, batch) of the CURE step with `per_side` forget and retain images."""
        config, dim = self.config, self.config.model.embedding_dim
        tx = optim.make_optimizer(config.student, 10, {"backbone": context.teacher.params,
                                                       "head": jnp.zeros(())})
        step = cure.make_cure_step(context.graphs, tx, config.cure,
                                   optim.lr_schedule(config.student, 10),
                                   batch_norm=config.unlearn.batch_norm)
        state = sharding.replicate(cure.initial_state(context, tx, jax.random.key(0)),
                                   self.mesh)
        side = {"image": self.images[:per_side],
                "target": self.rng.normal(size=(per_side, dim)).astype(np.float32),
                "index": np.arange(per_side, dtype=np.int32)}
        return step, state, sharding.shard_batch({"forget": side, "retain": side}, self.mesh)
