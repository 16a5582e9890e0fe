"""What the benchmarks in tools/ share."""

from __future__ import annotations

import time

import jax


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
