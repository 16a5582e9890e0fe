"""Unlearning methods, registered by name (`unlearn.method`); importing this package registers
every bundled method."""

from cure_jax.methods import cure, dispersion  # noqa: F401
from cure_jax.methods.base import METHODS, get_method  # noqa: F401
