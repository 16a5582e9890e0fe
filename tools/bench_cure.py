"""Benchmark: the CURE step next to the teacher step, and one forget-cluster refresh, in one run.

    python tools/bench_cure.py [--config default] [--steps 10] [--set key=value ...]

The CURE step reads the teacher's embeddings from the batch (cached once per run), so its cost
is one student forward and backward pass over the forget and retain images together: about one
teacher step over the same number of images. Both are measured at the same batch size (and the
CURE step also at the teacher's total number of images, half forget and half retain).
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from benchlib import timed_step

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import optim, sharding, teacher
from cure_jax.methods import cure
from cure_jax.methods.base import UnlabelledSet, UnlearnContext
from cure_jax.models.backbone import build_model, split_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="default")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    size, classes = config.data.image_size, config.data.num_identities
    batch = config.teacher.batch_size
    mesh = sharding.make_mesh(config.run.num_devices)
    rng = np.random.default_rng(0)
    model = build_model(config.model, num_classes=classes, image_size=size, seed=0)
    graphs, params, stats = split_model(model)
    # The teacher step donates its state: the backbone for CURE gets its own copy first.
    backbone_graphs, backbone = teacher.Teacher(graphs, *jax.tree.map(
        jnp.copy, (params, stats))).backbone()
    tx = optim.make_optimizer(config.teacher, 100, params)  # frozen layers as in training
    teacher_step = teacher.make_train_step(graphs.train, tx, config.model,
                                           optim.lr_schedule(config.teacher, 100))
    images = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    teacher_batch = sharding.shard_batch(
        {"image": images, "label": rng.integers(0, classes, batch).astype(np.int32)}, mesh)
    rows = []
    state = sharding.replicate(teacher.init_state(params, stats, tx), mesh)
    rows.append(("teacher step", batch,
                 *timed_step(teacher_step, state, teacher_batch, args.steps)[:2]))

    num_forget, num_retain = 640, 2000
    dim = config.model.embedding_dim
    forget = UnlabelledSet(rng.integers(0, 256, (num_forget, size, size, 3), dtype=np.uint8),
                           rng.normal(size=(num_forget, dim)).astype(np.float32),
                           rng.normal(size=(num_forget, dim)).astype(np.float32))
    retain = UnlabelledSet(np.zeros((num_retain, size, size, 3), np.uint8),
                           rng.normal(size=(num_retain, dim)).astype(np.float32),
                           rng.normal(size=(num_retain, dim)).astype(np.float32))
    with tempfile.TemporaryDirectory() as folder:
        context = UnlearnContext(config=config, graphs=backbone_graphs, teacher=backbone,
                                 forget=forget, retain=retain, mesh=mesh,
                                 folder=pathlib.Path(folder))
        cure_tx = optim.make_optimizer(config.student, 10, {"backbone": backbone.params,
                                                             "head": jnp.zeros(())})
        for per_side in (batch, batch // 2):
            step = cure.make_cure_step(backbone_graphs, cure_tx, config.cure,
                                       optim.lr_schedule(config.student, 10),
                                       batch_norm=config.unlearn.batch_norm)
            state = sharding.replicate(cure.initial_state(context, cure_tx, jax.random.key(0)),
                                       mesh)
            side = {"image": images[:per_side],
                    "target": rng.normal(size=(per_side, dim)).astype(np.float32),
                    "index": np.arange(per_side, dtype=np.int32)}
            cure_batch = sharding.shard_batch({"forget": side, "retain": side}, mesh)
            compile_s, seconds, state = timed_step(step, state, cure_batch, args.steps)
            rows.append((f"CURE step ({per_side} forget + {per_side} retain)", 2 * per_side,
                         compile_s, seconds))
        refresh = cure.make_refresh(context, jax.random.key(1))
        refresh(state)  # compile the embedding and k-means functions
        start = time.perf_counter()
        jax.block_until_ready(refresh(state).forget_centroids)
        refresh_s = time.perf_counter() - start

    print(f"config {args.config} {' '.join(args.overrides)}: {config.model.depth} width "
          f"{config.model.width}, {size}x{size}, {len(jax.devices())} "
          f"{jax.devices()[0].platform} device(s)")
    print("| step | images per step | compile s | ms per step | images/s | vs teacher step |")
    print("|---|---|---|---|---|---|")
    teacher_ms = rows[0][3] * 1000
    for name, count, compile_s, seconds in rows:
        print(f"| {name} | {count} | {compile_s:.1f} | {1000 * seconds:.0f} | "
              f"{count / seconds:.0f} | {1000 * seconds / teacher_ms:.2f}x |")
    print(f"\nOne forget-cluster refresh (embed {num_forget} images, k-means K="
          f"{config.cure.forget_clusters} x {config.cure.kmeans_restarts} restarts): "
          f"{refresh_s:.2f} s")


if __name__ == "__main__":
    main()
