"""Test-wide setup: importing the package sets its XLA flags before any backend starts."""

import jax

import cure_jax  # noqa: F401

# Tests compare computations that should agree to float32 tolerance (padded against unpadded
# batches, 4 devices against 1). GPUs run float32 matrix products in TF32 by default, whose
# rounding differs between such shapes by ~1e-4; full precision keeps the comparisons about the
# maths. A no-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")
