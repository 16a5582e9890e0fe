"""Dispersion unlearning (SPEC section 3): a forgotten identity's faces stop finding each other.

Two methods on CURE's machinery (`cure_jax.methods.cure.unlearn`), with P x K forget batches so
that every batch holds several images of each forget group:

- `dispersion`: the paper's setting. Updates are driven by the forget set's dispersion term;
  CURE's retain terms (scaled by `dispersion.retain_weight`, 0 removes them) keep the rest.
- `cure+dispersion`: CURE's six terms plus the dispersion term, in one step.

Groups are the k-means clusters of the teacher's forget embeddings (label-free), or the
identities when the request carries them (`dispersion.groups=labels`). They are fixed for the
run: clusters of already-dispersed embeddings would mean nothing.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Literal

from cure_jax.fields import Count, CountOrZero, NonNegativeFloat, PositiveFloat, Range
from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.cure import CureConfig, check_request, unlearn

if TYPE_CHECKING:
    from cure_jax.sections import OptimConfig


@dataclasses.dataclass(frozen=True)
class DispersionConfig:
    """Embedding dispersion (SPEC section 3): spread each forget group over the sphere."""

    weight: NonNegativeFloat = 1.0  # w_disp of the dispersion term
    # Of the three forms (mean positive cosine, hardest positive, smooth uniformity), uniformity
    # erased retrieval furthest for what the retained identities kept (docs/RESULTS.md).
    kind: Literal["mean", "hard", "uniformity"] = "uniformity"
    uniformity_t: PositiveFloat = 2.0  # t of the uniformity form
    # Groups: k-means clusters of the teacher's forget embeddings (label-free), or the identities
    # when the request names them.
    groups: Literal["clusters", "labels"] = "clusters"
    groups_per_batch: Count = 16  # P of the P x K forget batches (P * K = student.batch_size)
    images_per_group: Annotated[int, Range(2)] = 4  # K
    # Method `dispersion`: multiplies CURE's retain terms (w_cosr, w_fm, w_fd); 0 = forget only.
    retain_weight: NonNegativeFloat = 1.75  # what the retained mAP needs (docs/RESULTS.md)
    # Method `dispersion`: its learning rate and length (passes over the forget set; the decay
    # milestones of `student.milestones` scale with it; 0: `student.epochs`); the rest of
    # `student.*` applies. `cure+dispersion` uses `student.lr` and `student.epochs`.
    lr: PositiveFloat = 1e-3
    epochs: CountOrZero = 40


def check_dispersion(config, num_forget: int, num_retain: int) -> None:
    """CURE's checks plus a P x K batch that fills one student batch."""
    check_request(config, num_forget, num_retain)
    dispersion = config.dispersion
    pk = dispersion.groups_per_batch * dispersion.images_per_group
    if pk != config.student.batch_size:
        raise ValueError(f"dispersion.groups_per_batch * dispersion.images_per_group = {pk} must "
                         f"equal student.batch_size={config.student.batch_size}")
    if dispersion.epochs < 0:
        raise ValueError(f"dispersion.epochs={dispersion.epochs} must be >= 0 (0: student.epochs)")
    if dispersion.images_per_group < 2:
        raise ValueError("dispersion.images_per_group must be >= 2: a group needs pairs")


def without_forget_terms(cure: CureConfig, retain_scale: float) -> CureConfig:
    """CURE settings with the three forget terms removed and the retain terms scaled."""
    return dataclasses.replace(cure, w_pl=0.0, w_cosf=0.0, w_con=0.0,
                               w_cosr=cure.w_cosr * retain_scale, w_fm=cure.w_fm * retain_scale,
                               w_fd=cure.w_fd * retain_scale)


def dispersion_optim(student: OptimConfig, dispersion: DispersionConfig) -> OptimConfig:
    """`student` with the dispersion method's learning rate and length, the decay milestones
    scaled to keep their place in the run."""
    epochs = dispersion.epochs or student.epochs
    scale = epochs / student.epochs
    return dataclasses.replace(student, lr=dispersion.lr, epochs=epochs,
                               milestones=tuple(m * scale for m in student.milestones))


@register("dispersion", check=check_dispersion, reads=("student.", "cure."), pk_batches=True)
def run_dispersion(context: UnlearnContext) -> Backbone:
    """Dispersion on the forget groups, with CURE's retain terms to keep everyone else."""
    config = context.config
    cure = without_forget_terms(config.cure, config.dispersion.retain_weight)
    optim = dispersion_optim(config.student, config.dispersion)
    return unlearn(context, name="dispersion", cure=cure, dispersion=config.dispersion,
                   refresh=False, optim=optim, lr_key="dispersion.lr")


@register("cure+dispersion", check=check_dispersion,
          reads=("student.", "cure.", "dispersion."), pk_batches=True)
def run_cure_dispersion(context: UnlearnContext) -> Backbone:
    """CURE's six terms plus the dispersion term, in one jitted step."""
    config = context.config
    return unlearn(context, name="cure+dispersion", cure=config.cure,
                   dispersion=config.dispersion)
