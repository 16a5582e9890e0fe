"""Unlearning methods, registered by name (`unlearn.method`); importing this package registers
every bundled method."""

from cure_jax.methods import (  # noqa: F401
    bad_teacher,
    boundary_shrink,
    cure,
    dispersion,
    finetune,
    grad_ascent,
    neggrad,
    random_label,
    retrain,
    scrub,
    unsir,
)
from cure_jax.methods.base import METHODS, get_method  # noqa: F401
