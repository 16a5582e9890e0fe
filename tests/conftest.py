"""Test-wide setup: importing the package sets its XLA flags before any backend starts."""

import atexit
import os
import shutil
import tempfile

# One compile cache for the whole session, the command lines it starts included (they inherit the
# environment, and `run.compile_cache=auto` keeps the folder it names): a program that tests
# compile again, in this process or in another, is loaded instead. Its own folder, removed at the
# end, so that no test reads what an earlier session or a user's runs left.
_CACHE = tempfile.mkdtemp(prefix="cure_jax_test_compile_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import jax  # noqa: E402

import cure_jax  # noqa: E402, F401

jax.config.update("jax_compilation_cache_dir", _CACHE)  # in case jax was imported before

# Tests compare computations that should agree to float32 tolerance (padded against unpadded
# batches, 4 devices against 1). GPUs run float32 matrix products in TF32 by default, whose
# rounding differs between such shapes by ~1e-4; full precision keeps the comparisons about the
# maths. A no-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")
