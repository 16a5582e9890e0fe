"""Benchmark: the teacher's training step (images/s, compile time) and the training loader
(images/s), in one run, on the configuration the default job uses.

    python tools/bench_teacher.py [--config default] [--steps 20] [--set key=value ...]

The loader must outpace the step: its images/s divided by the step's is the headroom.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from benchlib import timed_step

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import optim, sharding, teacher
from cure_jax.models import backbone
from data_pipelines.pipelines import ArraySource, materialize, train_dataset, train_iterator
from data_pipelines.sources.synthetic import SyntheticFaces


def bench_step(config, steps: int, num_classes: int) -> tuple[float, float]:
    mesh = sharding.make_mesh(config.run.num_devices)
    model = backbone.build_model(config.model, num_classes=num_classes,
                                image_size=config.data.image_size, seed=0)
    graphs, params, stats = backbone.split_model(model)
    tx = optim.make_optimizer(config.teacher, 100, params)  # frozen layers as in training
    state = sharding.replicate(teacher.init_state(params, stats, tx), mesh)
    step = teacher.make_train_step(graphs.train, tx, config.model,
                                   optim.lr_schedule(config.teacher, 100))
    size, batch_size = config.data.image_size, config.teacher.batch_size
    rng = np.random.default_rng(0)
    batch = sharding.shard_batch({
        "image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
    compile_s, seconds, _ = timed_step(step, state, batch, steps)
    return compile_s, batch_size / seconds


def bench_loader(source, batch_size: int, batches: int) -> float:
    iterator = train_iterator(train_dataset(source, batch_size=batch_size, seed=0))
    next(iterator)  # start the prefetch threads
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="default")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    data, batch_size = config.data, config.teacher.batch_size
    rendered = SyntheticFaces(data.num_identities, data.images_per_identity,
                              image_size=data.image_size, seed=data.seed)
    start = time.perf_counter()
    cached = materialize(rendered, np.arange(min(len(rendered), 2000)), progress=False)
    render_rate = len(cached) / (time.perf_counter() - start)
    cached = ArraySource(cached.images, cached.labels)
    compile_s, step_rate = bench_step(config, args.steps, data.num_identities)
    cached_rate = bench_loader(cached, batch_size, 60)
    live_rate = bench_loader(rendered, batch_size, 10)
    print(f"config {args.config} {' '.join(args.overrides)}: {config.model.depth} "
          f"width {config.model.width}, {data.image_size}x{data.image_size}, batch {batch_size}, "
          f"{len(jax.devices())} {jax.devices()[0].platform} device(s)")
    print("| what | images/s | vs step |")
    print("|---|---|---|")
    print(f"| teacher step (compile {compile_s:.1f} s) | {step_rate:.0f} | 1.00 |")
    print(f"| loader, in-memory cache (flip, normalise, batch) | {cached_rate:.0f} | "
          f"{cached_rate / step_rate:.1f} |")
    print(f"| loader, rendering on the fly | {live_rate:.0f} | {live_rate / step_rate:.1f} |")
    print(f"| rendering alone (one thread) | {render_rate:.0f} | {render_rate / step_rate:.1f} |")


if __name__ == "__main__":
    main()
