"""Compiled programs kept between runs: JAX's persistent compilation cache, for the command lines.

Every command compiles its steps, embedding and evaluation programs anew in each process (5-15 s
for a training step on the default model). A resumed run, a rerun, the next forget request or
another command on the same model compiles the same programs again; with the cache on it loads
them from disk instead. A cached program is the one that would be compiled (the key covers the
program, the compile options, the XLA flags and the jax version), so results do not change;
XLA:CPU refuses a program compiled for another CPU type and compiles it again
(docs/PERFORMANCE.md, "Compiled programs kept between runs").
"""

from __future__ import annotations

import os
import pathlib

import jax

AUTO = "auto"
OFF = "off"


def default_folder() -> pathlib.Path:
    """`$XDG_CACHE_HOME/cure_jax/jax`, else `~/.cache/cure_jax/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "cure_jax" / "jax"


def use(setting: str) -> pathlib.Path | None:
    """Turns the cache on as `run.compile_cache` says; returns its folder, or None when off.

    "auto" keeps a folder the environment already chose (`JAX_COMPILATION_CACHE_DIR`) and stays
    off where it turned the cache off (`JAX_ENABLE_COMPILATION_CACHE=false`); otherwise it uses
    `default_folder()`, and goes without a cache (saying so) where that cannot be created. "off"
    turns it off; anything else is a folder, created if missing. JAX decides at a process's first
    compilation whether the process uses the cache, so this must run before anything compiles.

    Raises:
      ValueError: a folder given by name that cannot be created, naming the key.
    """
    if setting == OFF:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if setting == AUTO:
        if not jax.config.jax_enable_compilation_cache:
            return None
        chosen = jax.config.jax_compilation_cache_dir
        folder = pathlib.Path(chosen) if chosen else default_folder()
    else:
        folder = pathlib.Path(setting).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if setting != AUTO:
            raise ValueError(f"run.compile_cache={setting!r}: cannot create the folder ({error}); "
                             f"give a writable folder, {AUTO!r} or {OFF!r}") from error
        print(f"note: no compile cache ({folder}: {error}); programs are compiled in every run")
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
