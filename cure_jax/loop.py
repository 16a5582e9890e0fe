"""The host-side training loop shared by every stage: steps, metrics, progress, checkpoints.

The loop never reads device values inside a step: metrics stay on device and are fetched once per
log interval (and before every checkpoint, so that a non-finite loss is caught before it could be
saved). Batches come from a grain iterator whose state is saved with each checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np
from tqdm import tqdm

from cure_jax import sharding
from cure_jax.checkpointing import Checkpointer


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def truncate_log(path: pathlib.Path, last_step: int) -> None:
    """Drops log lines past `last_step` (they are recomputed after a resume)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


class MetricLog:
    """Collects per-step device metrics and writes their interval means as JSON lines."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.pending: list[dict] = []
        self.last_time = time.perf_counter()

    def add(self, metrics: dict) -> None:
        self.pending.append(metrics)

    def flush(self, step: int, checkpointer: Checkpointer | None) -> dict:
        """Reads the pending metrics (one host sync), checks them and appends their mean."""
        if not self.pending:
            return {}
        values = jax.device_get(self.pending)
        first = step - len(values) + 1
        for offset, row in enumerate(values):
            loss = float(row["loss"])
            if not math.isfinite(loss):
                latest = checkpointer.latest_step() if checkpointer else None
                keep = f"the last good checkpoint is step {latest}" if latest is not None else (
                    "no checkpoint was saved yet")
                raise NonFiniteLossError(
                    f"loss became {loss} at step {first + offset}; training stopped and {keep}. "
                    "Lower the learning rate or check the input data.")
        now = time.perf_counter()
        summary = {key: float(np.mean([row[key] for row in values])) for key in values[0]}
        summary = {"step": step, **summary,
                   "steps_per_s": len(values) / max(now - self.last_time, 1e-9)}
        self.last_time = now
        self.pending = []
        with self.path.open("a") as f:
            f.write(json.dumps(summary) + "\n")
        return summary


def run_loop(*, step_fn: Callable, state, root_key: jax.Array, iterator, num_steps: int,
             mesh, checkpointer: Checkpointer, log_path: pathlib.Path, log_every: int,
             checkpoint_every: int, progress: bool, desc: str, crash_at_step: int = 0,
             after_step: Callable | None = None):
    """Runs `state, metrics = step_fn(state, batch, root_key)` until `state.step == num_steps`.

    Args:
      step_fn: the jitted step; it folds the step counter into `root_key` itself.
      state: a pytree with a `step` field, already placed on the mesh.
      iterator: yields host batches (dicts of NumPy arrays); `get_state()` is checkpointed.
      crash_at_step: testing aid: the process exits abruptly after this step (0: never), as if
        it had been killed, to exercise resuming.
      after_step: optional `state = after_step(state, step)` run between steps, before the
        step's checkpoint (CURE's cluster refresh), so that a resumed run sees its result.

    Returns:
      The final state.
    """
    step = int(state.step)
    log = MetricLog(log_path)
    bar = tqdm(total=num_steps, initial=step, desc=desc, disable=not progress, unit="step",
               dynamic_ncols=True, smoothing=0.1)
    while step < num_steps:
        batch = sharding.shard_batch(next(iterator), mesh)
        state, metrics = step_fn(state, batch, root_key)
        log.add(metrics)
        step += 1
        bar.update(1)
        if after_step is not None:
            state = after_step(state, step)
        save = step % checkpoint_every == 0 or step == num_steps
        if save or step % log_every == 0:
            summary = log.flush(step, checkpointer)
            bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()
                             if k in ("loss", "accuracy", "lr")})
        if save:
            checkpointer.save(step, state, {"iterator": iterator.get_state()})
        if crash_at_step and step == crash_at_step:
            # A kill right after the latest checkpoint reached the disk: no cleanup, no final
            # save. (A kill during a save is Orbax's to handle: unfinished saves are ignored.)
            bar.close()
            checkpointer.wait()
            os._exit(75)
    bar.close()
    checkpointer.wait()
    return state
