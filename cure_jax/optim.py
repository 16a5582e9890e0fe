"""Optimisers and learning-rate schedules, in one place: the teacher's, the students' and the
baselines'.

Fine-tuning a pretrained backbone splits the parameters into groups (`param_groups`): a head
beside the backbone (the teacher's margin head, CURE's pseudo-label head) learns at the
configured rate, the backbone at `backbone_lr_scale` times it, and the layers kept as imported
(`cure_jax.models.freeze.FrozenParam`) not at all. The groups come from the parameters
themselves, so every optimiser of a run treats the same layers alike. No update is computed for
a frozen parameter: XLA drops the gradients nothing reads.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from cure_jax.models.freeze import is_frozen


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up, then either the base rate multiplied by `decay` at each milestone epoch
    ("step") or a cosine decay to zero at the last epoch ("cosine"). `config`: an
    `OptimConfig`."""
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        after = optax.cosine_decay_schedule(config.lr, max(config.epochs * steps_per_epoch
                                                           - warmup, 1))
    else:
        boundaries = {int(m * steps_per_epoch) - warmup: config.decay for m in config.milestones}
        after = optax.piecewise_constant_schedule(config.lr, boundaries)
    if warmup <= 0:
        return after
    ramp = optax.linear_schedule(config.lr / max(warmup, 1), config.lr, warmup)
    return optax.join_schedules([ramp, after], [warmup])


def param_groups(params) -> object:
    """The group of every parameter, a pytree of the structure of `params`: "frozen" for a
    `FrozenParam`, "head" under a top-level "head" key (a head beside the backbone), else
    "backbone"."""

    def group(path, leaf) -> str:
        if is_frozen(leaf):
            return "frozen"
        top = path[0]
        return "head" if getattr(top, "key", getattr(top, "name", None)) == "head" else "backbone"

    return jax.tree_util.tree_map_with_path(group, params,
                                            is_leaf=lambda x: isinstance(x, nnx.Variable))


def _base(config, schedule) -> optax.GradientTransformation:
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )


def make_optimizer(config, steps_per_epoch: int, params=None) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (PyTorch's `SGD(weight_decay=...)`, as the
    papers), or AdamW with decoupled weight decay, on `lr_schedule`.

    Args:
      config: an `OptimConfig`.
      steps_per_epoch: optimiser steps per epoch (the schedule's unit).
      params: the parameters it will update. When given, frozen parameters get no update and,
        with `config.backbone_lr_scale` below 1, the backbone learns at that fraction of the
        head's rate (`param_groups`).
    """
    schedule = lr_schedule(config, steps_per_epoch)
    groups = set(jax.tree.leaves(param_groups(params))) if params is not None else set()
    scale = config.backbone_lr_scale
    if "frozen" not in groups and (scale == 1.0 or "head" not in groups):
        return _base(config, schedule)  # one group: the plain optimiser, as without pretraining
    backbone = (optax.set_to_zero() if scale == 0.0
                else _base(config, lambda step: scale * schedule(step)))
    transforms = {"head": _base(config, schedule), "backbone": backbone,
                  "frozen": optax.set_to_zero()}
    return optax.multi_transform(transforms, param_groups)


def keep_frozen(tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
    """`tx`, with no update for the frozen parameters of `params` (unchanged when there are
    none): for the baselines' own optimisers."""
    if "frozen" not in set(jax.tree.leaves(param_groups(params))):
        return tx

    def trained_or_frozen(tree):
        return jax.tree.map(lambda group: "frozen" if group == "frozen" else "trained",
                            param_groups(tree))

    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                                 trained_or_frozen)


def sgd(lr: float, momentum: float) -> optax.GradientTransformation:
    """Constant-rate SGD with momentum, the baselines' optimiser."""
    return optax.sgd(lr, momentum=momentum or None)
