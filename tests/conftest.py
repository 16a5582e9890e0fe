"""Test-wide setup: importing the package sets its XLA flags before any backend starts."""

import atexit
import os
import shutil
import tempfile

# One compile cache for the whole session, the command lines it starts included (they inherit the
# environment, and `run.compile_cache=auto` keeps the folder it names): a program that tests
# compile again, in this process or in another, is loaded instead. Its own folder, removed at the
# end, so that no test reads what an earlier session or a user's runs left. The pytest-xdist
# workers (pyproject.toml runs tests in parallel) inherit the folder of the process that started
# them, which alone removes it.
_CACHE_VARIABLE = "CURE_JAX_TEST_COMPILE_CACHE"
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and os.environ.get(_CACHE_VARIABLE):
    _CACHE = os.environ[_CACHE_VARIABLE]
else:
    _CACHE = tempfile.mkdtemp(prefix="cure_jax_test_compile_cache_")
    os.environ[_CACHE_VARIABLE] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
if _WORKER:
    # On a GPU each worker would otherwise reserve 75% of its memory at start.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

import cure_jax  # noqa: E402, F401

jax.config.update("jax_compilation_cache_dir", _CACHE)  # in case jax was imported before

# Tests compare computations that should agree to float32 tolerance (padded against unpadded
# batches, 4 devices against 1). GPUs run float32 matrix products in TF32 by default, whose
# rounding differs between such shapes by ~1e-4; full precision keeps the comparisons about the
# maths. A no-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most eight.

    Much of the suite is XLA compiling, which keeps one core busy, so on two cores two workers
    finish it about 1.3x sooner than one process (README). Each worker holds its own JAX runtime
    and compiled programs (up to 5 GB here), hence the cap.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))
