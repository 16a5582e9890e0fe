"""Orbax checkpoints behind one small interface.

A checkpoint holds a pytree of arrays (model, optimiser, step, anything on device) and a small JSON
document (the data iterator's state and other host-side facts). Saves are asynchronous; `close()`
waits for them. Restores go into an abstract target so that arrays come back with the shardings
of the live state.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores `(state, extra)` pairs under `directory/<step>`."""

    def __init__(self, directory: pathlib.Path | str, *, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps that have a finished checkpoint, in increasing order."""
        return sorted(self._manager.all_steps())

    def delete(self, step: int) -> None:
        """Removes the checkpoint at `step` (one that training must not resume from)."""
        self._manager.delete(step)

    def save(self, step: int, state, extra: dict) -> None:
        """Starts an asynchronous save of `state` (pytree of arrays) and `extra` (JSON-able)."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)))

    def restore(self, step: int, like):
        """Restores the checkpoint at `step` into the structure, shapes and shardings of `like`.

        Returns:
          (state, extra).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
        return restored["state"], restored["extra"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
