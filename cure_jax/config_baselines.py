"""Config sections of the baseline unlearning methods (SPEC section 5), one dataclass per method.

Part of `cure_jax.config.Config`: set with `--set scrub.temperature=2`, etc. Learning rates and
epochs are pinned here so that a comparison is reproducible; an epoch is one pass over the set
the method iterates (stated per field).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """What every baseline shares: how it gets labels without identity labels."""

    # "pseudo": k-means pseudo-labels over the teacher's embeddings of retain + forget images and a
    # fixed centroid head `scale * cos(z, c)` replace identity labels and the identity classifier.
    # "true": the supervised originals (identity labels and the teacher's margin-head centres).
    labels: str = "pseudo"
    clusters: int = 200  # K_all of the pseudo-labels
    kmeans_iters: int = 30
    kmeans_restarts: int = 2


@dataclasses.dataclass(frozen=True)
class ScrubConfig:
    epochs: int = 3  # passes over the retain set
    max_steps_epochs: int = 2  # msteps: epochs that start with a forget (max) pass
    lr: float = 5e-4
    momentum: float = 0.9
    temperature: float = 4.0
    gamma: float = 0.99  # weight of the retain cross-entropy
    alpha: float = 0.001  # weight of the retain KL


@dataclasses.dataclass(frozen=True)
class BadTeacherConfig:
    epochs: int = 1  # passes over D_f plus the sampled share of D_r
    retain_share: float = 0.3
    lr: float = 1e-4  # Adam
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class UnsirConfig:
    noise_steps: int = 5  # Adam steps optimising the noise per forget batch
    noise_lr: float = 0.01
    impair_epochs: int = 1  # passes over the forget set with noise + retain
    repair_epochs: int = 1  # passes over the retain set
    lr: float = 1e-3
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class NegGradConfig:
    epochs: int = 2  # passes over the forget set, each step paired with a retain batch
    lr: float = 1e-3
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class RandomLabelConfig:
    epochs: int = 2  # passes over the forget set with random other labels
    repair_epochs: int = 1  # passes over the retain set
    lr: float = 1e-3
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class GradAscentConfig:
    epochs: int = 2  # passes over the forget set
    lr: float = 5e-4
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class BoundaryShrinkConfig:
    epochs: int = 10  # passes over the forget set
    bound: float = 0.1  # FGSM step in [0, 1] pixel space
    lr: float = 1e-5
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 2  # passes over the retain set
    lr: float = 1e-3
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Retraining from scratch on the retain set uses the teacher's recipe (`teacher.*`); this
    only says which labels it trains on (`baselines.labels`)."""

    epochs: int = 0  # 0: the teacher's number of epochs
