"""Test-wide setup: importing the package sets its XLA flags before any backend starts."""

import cure_jax  # noqa: F401
