"""Several seeds of one unlearning experiment: the seeds a command line names, the folder of each
seed's runs, and the mean and spread of their metrics.

A seed is `unlearn.seed`: it draws which identities are forgotten and seeds the unlearning run
(its k-means, batches and per-step keys). The teacher is one for all seeds (`run.seed`), so the
spread measures what a different request and a different unlearning run change, not a different
teacher.

Layout: without `--seeds` a run keeps today's folders (`<workdir>/<method>`); with `--seeds`
every seed has its own folder, `<workdir>/seed<k>/<method>`, beside the one shared teacher
(`<workdir>/teacher`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, NamedTuple

import numpy as np


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """The seeds of a `--seeds 0,1,2` argument; None when it is not given.

    Raises:
      ValueError: not a comma-separated list of distinct non-negative integers.
    """
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        seeds = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") \
            from None
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


def with_seed(config, seed: int):
    """`config` with `unlearn.seed` set to `seed`."""
    return dataclasses.replace(config, unlearn=dataclasses.replace(config.unlearn, seed=seed))


def seed_folder(workdir: pathlib.Path, seed: int | None) -> pathlib.Path:
    """Where one seed's runs live: `workdir` itself for a single-seed run (seed None), else
    `workdir/seed<k>`."""
    return workdir if seed is None else workdir / f"seed{seed}"


def note(seed_list: tuple[int, ...]) -> str:
    """The sentence a several-seed report opens with (one seed: no spread to speak of)."""
    what = (f"(unlearn.seed = {', '.join(map(str, seed_list))}: which identities are forgotten "
            "and the unlearning run's randomness; one teacher)")
    if len(seed_list) == 1:
        return f"One seed {what}: no spread is measured."
    return (f"Each value is the mean ± sample standard deviation over {len(seed_list)} seeds "
            f"{what}; the teacher's values before unlearning vary with the seeds' requests.")


class Spread(NamedTuple):
    """One metric over several seeds.

    Attributes:
      mean: the mean over the seeds.
      std: the sample standard deviation (ddof = 1; 0 for one seed).
      values: the value of each seed, in seed order.
    """

    mean: float
    std: float
    values: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.mean:g}" if self.std == 0 else f"{self.mean:g} ± {self.std:g}"


def mean_of(value: Any) -> Any:
    """The mean of a `Spread`, or the value itself."""
    return value.mean if isinstance(value, Spread) else value


def std_of(value: Any) -> float:
    """The standard deviation of a `Spread`, 0 for a plain value."""
    return value.std if isinstance(value, Spread) else 0.0


def spread(values: list[float]) -> Spread:
    """Mean and sample standard deviation of finite `values` (NaNs are left out of both)."""
    finite = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if len(finite) == 0:
        return Spread(math.nan, math.nan, tuple(values))
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return Spread(float(np.mean(finite)), std, tuple(float(v) for v in values))


def paired_difference(values_a: list[float], values_b: list[float]) -> Spread:
    """`a - b` seed by seed (the same request on both sides), over the seeds: free of the spread
    that the requests themselves cause, which an unpaired comparison of two means keeps."""
    return spread([a - b for a, b in zip(values_a, values_b, strict=True)])


# What describes a run rather than measures it: kept as it is while every seed agrees.
DESCRIPTIVE_KEYS = ("method", "head_scored", "ues_alpha", "forget_identities")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def aggregate(runs: list[dict]) -> dict:
    """The metrics of one method over several seeds.

    Args:
      runs: one `metrics.json` dict per seed.

    Returns:
      A dict with every key that all runs have: each number a `Spread` (also where the seeds
      agree, so that every measurement reads `mean ± std`), except the descriptive keys
      (`DESCRIPTIVE_KEYS`) and other values that every seed agrees on, which stay as they are;
      other values that differ (each seed's student file and its digest) as the list of them,
      in seed order.

    Raises:
      ValueError: no runs, or runs that differ in a descriptive key (other methods).
    """
    if not runs:
        raise ValueError("aggregate needs at least one run")
    out = {}
    for key in runs[0]:
        if any(key not in run for run in runs):
            continue
        values = [run[key] for run in runs]
        agree = all(value == values[0] for value in values)
        if agree and (key in DESCRIPTIVE_KEYS or not _is_number(values[0])):
            out[key] = values[0]
        elif key in DESCRIPTIVE_KEYS:  # runs of different methods do not aggregate
            raise ValueError(f"{key!r} differs between the runs: {values}")
        elif all(_is_number(value) for value in values):
            out[key] = spread([float(value) for value in values])
        else:
            out[key] = values
    return out


def to_json(metrics: dict) -> dict:
    """`metrics` with each `Spread` written as {"mean", "std", "values"}."""
    return {key: (value._asdict() if isinstance(value, Spread) else value)
            for key, value in metrics.items()}
