"""Optimisers and learning-rate schedules, in one place: the teacher's, the students' and the
baselines'."""

from __future__ import annotations

import optax


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


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (PyTorch's `SGD(weight_decay=...)`, as the
    papers), or AdamW with decoupled weight decay, on `lr_schedule`."""
    schedule = lr_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )


def sgd(lr: float, momentum: float) -> optax.GradientTransformation:
    """Constant-rate SGD with momentum, the baselines' optimiser."""
    return optax.sgd(lr, momentum=momentum or None)
