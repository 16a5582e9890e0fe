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
from benchlib import RandomSetup, timed_step

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax.methods import cure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="default")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    setup = RandomSetup(config)
    batch = config.teacher.batch_size
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        context = setup.cure_context(pathlib.Path(folder))  # before the teacher step donates
        rows.append(("teacher step", batch, *timed_step(*setup.teacher_step(), args.steps)[:2]))
        for per_side in (batch, batch // 2):
            compile_s, seconds, state = timed_step(*setup.cure_step(context, per_side),
                                                   args.steps)
            rows.append((f"CURE step ({per_side} forget + {per_side} retain)", 2 * per_side,
                         compile_s, seconds))
        refresh = cure.make_refresh(context, jax.random.key(1))
        refresh(state)  # compile the embedding and k-means functions
        start = time.perf_counter()
        jax.block_until_ready(refresh(state).forget_centroids)
        refresh_s = time.perf_counter() - start

    size = config.data.image_size
    print(f"config {args.config} {' '.join(args.overrides)}: {config.model.depth} width "
          f"{config.model.width}, {size}x{size}, {len(jax.devices())} "
          f"{jax.devices()[0].platform} device(s)")
    print("| step | images per step | compile s | ms per step | images/s | vs teacher step |")
    print("|---|---|---|---|---|---|")
    teacher_ms = rows[0][3] * 1000
    for name, count, compile_s, seconds in rows:
        print(f"| {name} | {count} | {compile_s:.1f} | {1000 * seconds:.0f} | "
              f"{count / seconds:.0f} | {1000 * seconds / teacher_ms:.2f}x |")
    print(f"\nOne forget-cluster refresh (embed {len(context.forget.images)} images, k-means K="
          f"{config.cure.forget_clusters} x {config.cure.kmeans_restarts} restarts): "
          f"{refresh_s:.2f} s")


if __name__ == "__main__":
    main()
