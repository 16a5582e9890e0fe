"""Types of config fields that carry their valid values, so that one check covers every field.

A field declares its range in its annotation, `batch_size: Count = 64`, and
`cure_jax.config.validate` checks every field of a config against it before any work starts,
naming the key, the value and the valid range. Section dataclasses may add rules between their
own fields with a `problems()` method (see `OptimConfig`). This module imports nothing from the
package, so that method modules can declare their settings with it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated


@dataclasses.dataclass(frozen=True)
class Range:
    """The closed or open interval of valid values of a numeric field."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not valid
    high_open: bool = False  # high itself is not valid

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.high_open
                                                           and value == self.high))

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else f"{value}"


# Counts of things (batch sizes, epochs, clusters, intervals): at least one.
Count = Annotated[int, Range(1)]
# Counts where 0 means "none" or "use the default" (the field's comment says which).
CountOrZero = Annotated[int, Range(0)]
# Seeds: what NumPy and JAX both accept.
Seed = Annotated[int, Range(0, 2**32 - 1)]
# Learning rates, temperatures, scales.
PositiveFloat = Annotated[float, Range(0.0, low_open=True)]
# Weights of loss terms (0 removes a term), decays, margins.
NonNegativeFloat = Annotated[float, Range(0.0)]
# Shares and probabilities.
Probability = Annotated[float, Range(0.0, 1.0)]
# Momentum, dropout and held-out shares: 1 would leave nothing.
Fraction = Annotated[float, Range(0.0, 1.0, high_open=True)]
