"""Runs one of the package's command lines and kills the process right after a given training
step, as `kill -9` would, once the checkpoints already started have reached the disk.

    python -m tests.crash_cli STEP cure_jax.train --config smoke ...

The crash is injected through the training loop's `after_step` hook, so that the production loop
carries no test-only code. The process exits with status 75.
"""

import importlib
import os
import sys

from cure_jax import loop

CRASH_STATUS = 75


def crash_after(crash_at_step: int) -> None:
    """Makes every training loop of this process exit abruptly after step `crash_at_step`."""
    original = loop.run_loop

    def run_loop(*, after_step=None, checkpointer, **kwargs):
        def after(state, step):
            if after_step is not None:
                state = after_step(state, step)
            if step == crash_at_step:
                checkpointer.wait()  # what was saved before the kill is on disk
                os._exit(CRASH_STATUS)
            return state

        return original(after_step=after, checkpointer=checkpointer, **kwargs)

    loop.run_loop = run_loop


if __name__ == "__main__":
    crash_after(int(sys.argv[1]))
    sys.exit(importlib.import_module(sys.argv[2]).main(sys.argv[3:]))
