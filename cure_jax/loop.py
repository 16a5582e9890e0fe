"""The host-side training loop shared by every stage: steps, metrics, progress, checkpoints.

The loop never reads device values inside a step: metrics stay on device and are fetched once per
log interval (and before every checkpoint, so that a non-finite loss or parameter is caught before
it could be saved). Batches come from a grain iterator whose state is saved with each checkpoint.

When the loss becomes non-finite at step m, the state saved at step m - 1 or later is what
produced it (an update can explode the parameters while its own loss is still finite): those
checkpoints are deleted, so that the last one kept is good, and the error says how to continue
from it with a lower learning rate (`run.restart_from`).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np
from tqdm import tqdm

from cure_jax import sharding
from cure_jax.checkpointing import Checkpointer


class NonFiniteLossError(RuntimeError):
    """The loss or the parameters became NaN or infinite; the last good checkpoint is kept."""


class _NonFinite(Exception):
    """Raised by `MetricLog.flush`: the first step whose loss or parameters are not finite."""

    def __init__(self, step: int, what: str):
        super().__init__(what)
        self.step = step
        self.what = what


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

    def flush(self, step: int) -> dict:
        """Reads the pending metrics (one host sync), checks them and appends their mean.

        Raises:
          _NonFinite: a step's loss is NaN or infinite, or its update left a parameter so.
        """
        if not self.pending:
            return {}
        values = jax.device_get(self.pending)
        first = step - len(values) + 1
        for offset, row in enumerate(values):
            loss = float(row["loss"])
            if not math.isfinite(loss):
                raise _NonFinite(first + offset, f"loss became {loss}")
            if not row.get("params_finite", True):
                raise _NonFinite(first + offset + 1, "the parameters became non-finite")
        now = time.perf_counter()
        summary = {key: float(np.mean([row[key] for row in values]))
                   for key in values[0] if key != "params_finite"}
        summary = {"step": step, **summary,
                   "steps_per_s": len(values) / max(now - self.last_time, 1e-9)}
        self.last_time = now
        self.pending = []
        with self.path.open("a") as f:
            f.write(json.dumps(summary) + "\n")
        return summary


def run_loop(*, step_fn: Callable, state, root_key: jax.Array, iterator, num_steps: int,
             mesh, checkpointer: Checkpointer, log_path: pathlib.Path, run, desc: str,
             after_step: Callable | None = None):
    """Runs `state, metrics = step_fn(state, batch, root_key)` until `state.step == num_steps`.

    Args:
      step_fn: the jitted step; it folds the step counter into `root_key` itself.
      state: a pytree with a `step` field, already placed on the mesh.
      iterator: yields host batches (dicts of NumPy arrays); `get_state()` is checkpointed.
      run: the `RunConfig` (log and checkpoint intervals, progress bar).
      after_step: optional `state = after_step(state, step)` run between steps, before the
        step's checkpoint (CURE's cluster refresh), so that a resumed run sees its result.

    Returns:
      The final state.
    """
    step = int(state.step)
    log = MetricLog(log_path)
    bar = tqdm(total=num_steps, initial=step, desc=desc, disable=not run.progress, unit="step",
               dynamic_ncols=True, smoothing=0.1)
    while step < num_steps:
        batch = sharding.shard_batch(next(iterator), mesh)
        state, metrics = step_fn(state, batch, root_key)
        log.add(metrics)
        step += 1
        bar.update(1)
        if after_step is not None:
            state = after_step(state, step)
        save = step % run.checkpoint_every == 0 or step == num_steps
        if save or step % run.log_every == 0:
            summary = log.flush(step)
            bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()
                             if k in ("loss", "accuracy", "lr")})
        if save:
            checkpointer.save(step, state, {"iterator": iterator.get_state()})
    bar.close()
    checkpointer.wait()
    return state


def run_phase(*, folder: pathlib.Path, step_fn: Callable, state, iterator, num_steps: int,
              root_key: jax.Array, mesh, run, desc: str, lr_key: str,
              after_step: Callable | None = None):
    """Runs one resumable phase of training under `folder`: checkpoints in `folder/checkpoints`,
    interval metrics in `folder/metrics.jsonl`.

    A phase whose checkpoints exist resumes from the latest (a finished one only restores its
    final state); log lines past the restored step are dropped, since they are recomputed. An
    unfinished phase restarts from step `run.restart_from` instead when it is set (>= 0; 0 starts
    over), deleting the checkpoints after it.

    Args:
      folder: the phase's folder.
      step_fn: the phase's jitted step `step_fn(state, batch, root_key) -> (state, metrics)`.
      state: the state to start from when nothing was saved, placed on the mesh; a pytree with
        a `step` field. A restored state takes its structure, shapes and shardings.
      iterator: the phase's batches; its state is saved with each checkpoint.
      num_steps: the phase ends when `state.step` reaches it.
      root_key: the phase's key; each step folds its counter in.
      mesh: the device mesh.
      run: the `RunConfig` (intervals, checkpoints kept, restart, progress bar).
      desc: the phase's name in messages and on the progress bar.
      lr_key: the config key of the phase's learning rate, for the advice after a non-finite loss.
      after_step: see `run_loop`.

    Returns:
      The final state.

    Raises:
      NonFiniteLossError: the loss or the parameters became non-finite; the message says which
        checkpoint is kept and how to continue from it.
      ValueError: `run.restart_from` names a step that has no checkpoint.
    """
    checkpointer = Checkpointer(folder / "checkpoints", max_to_keep=run.max_to_keep)
    try:
        latest = checkpointer.latest_step()
        if run.restart_from >= 0 and latest is not None and latest < num_steps:
            latest = _restart(checkpointer, run.restart_from, desc)
        if latest is not None:
            state, extra = checkpointer.restore(latest, state)
            iterator.set_state(extra["iterator"])
            if latest < num_steps:
                print(f"{desc}: resuming from step {latest} of {num_steps}")
        # Lines written after the last checkpoint (or before the first) are recomputed.
        truncate_log(folder / "metrics.jsonl", latest or 0)
        try:
            return run_loop(step_fn=step_fn, state=state, root_key=root_key, iterator=iterator,
                            num_steps=num_steps, mesh=mesh, checkpointer=checkpointer,
                            log_path=folder / "metrics.jsonl", run=run, desc=desc,
                            after_step=after_step)
        except _NonFinite as bad:
            raise NonFiniteLossError(_recover(checkpointer, bad, desc, lr_key)) from None
    finally:
        # Also on an error: pending saves finish, threads stop.
        checkpointer.close()


def _restart(checkpointer: Checkpointer, step: int, desc: str) -> int | None:
    """Deletes the checkpoints after `step`; returns the step to resume from (None: none)."""
    steps = checkpointer.all_steps()
    if step and step not in steps:
        raise ValueError(f"run.restart_from={step}: {desc} has no checkpoint at that step; its "
                         f"checkpoints are at steps {', '.join(map(str, steps))} (0 starts over)")
    for later in steps:
        if later > step:
            checkpointer.delete(later)
    print(f"{desc}: restarting from step {step}")
    return step or None


def _recover(checkpointer: Checkpointer, bad: _NonFinite, desc: str, lr_key: str) -> str:
    """Deletes the checkpoints the bad state may have reached; the message for the user."""
    checkpointer.wait()
    for step in checkpointer.all_steps():
        # The state saved at step m - 1 is the one whose update produced the failure at m.
        if step >= bad.step - 1:
            checkpointer.delete(step)
    good = checkpointer.all_steps()
    restart = good[-1] if good else 0
    keep = (f"the last good checkpoint is step {restart}" if good
            else "no good checkpoint was saved")
    return (f"{desc}: {bad.what} at step {bad.step}; training stopped and {keep}. To continue "
            f"{'from it' if good else 'from the start'} with a lower learning rate, run the same "
            f"command with --set {lr_key}=<lower> --set run.restart_from={restart} (or check the "
            "input data).")
