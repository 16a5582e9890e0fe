"""UNSIR (SPEC section 5; Tarun et al. 2023), instance-wise as used for identity forgetting:
impair the model with error-maximising noise, then repair it on the retain set.

Impair: each step pairs a forget batch with a retain batch. Noise images, drawn from N(0, 1) in
the normalised pixel space, take `unsir.noise_steps` Adam steps (`noise_lr`) that maximise the
MSE between the model's head logits on them and on the forget images (model frozen, evaluation
mode); clipped to the image range [-1, 1], they are trained on with the retain batch's labels,
beside the retain batch itself: `CE(noise, retain labels) + CE(retain)`. Repair: CE passes over
the retain set. The noise is drawn fresh from the per-step key, so a resumed run draws the same.
Labels are the k-means pseudo-labels of the teacher's embeddings, or identities with
`baselines.labels=true` (`cure_jax.methods.label_free`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cure_jax.fields import CountOrZero, Fraction, PositiveFloat
from cure_jax.losses.distill import cross_entropy, head_logits
from cure_jax.methods.base import Backbone, UnlearnContext, register
from cure_jax.methods.label_free import (
    BASELINE_READS,
    LossFn,
    Phase,
    StudentState,
    check_labels,
    classifier_loss,
    make_labels,
    run_phases,
)
from cure_jax.optim import sgd
from cure_jax.steps import Prepare


@dataclasses.dataclass(frozen=True)
class UnsirConfig:
    """UNSIR's settings (the paper's; other values tried change nothing here:
    docs/interpretations.md)."""

    noise_steps: CountOrZero = 5  # Adam steps optimising the noise per forget batch
    noise_lr: PositiveFloat = 0.01
    impair_epochs: CountOrZero = 1  # passes over the forget set with noise + retain
    repair_epochs: CountOrZero = 1  # passes over the retain set
    lr: PositiveFloat = 1e-3
    momentum: Fraction = 0.9


def make_noise(graph_eval: nnx.GraphDef, *, scale: float, steps: int, lr: float) -> Prepare:
    """`prepare(state, batch, key)` adding "noise" images [B, S, S, 3] that maximise the MSE
    between the current model's logits on them and on `batch["forget"]["image"]`."""
    noise_tx = optax.adam(lr)

    def prepare(state: StudentState, batch: dict, key: jax.Array) -> dict:
        # The model is a constant here: only the noise is optimised.
        params, batch_stats, centres = jax.lax.stop_gradient(
            (state.params, state.batch_stats, state.centres))

        def logits(images):
            return head_logits(nnx.merge(graph_eval, params, batch_stats)(images), centres,
                               scale=scale)

        forget_logits = logits(batch["forget"]["image"])

        def negative_mse(noise):
            return -jnp.mean(jnp.square(logits(noise) - forget_logits))

        def adam_step(_, carry):
            noise, opt_state = carry
            updates, opt_state = noise_tx.update(jax.grad(negative_mse)(noise), opt_state)
            return optax.apply_updates(noise, updates), opt_state

        noise = jax.random.normal(key, batch["forget"]["image"].shape)
        noise, _ = jax.lax.fori_loop(0, steps, adam_step, (noise, noise_tx.init(noise)))
        return {**batch, "noise": jnp.clip(noise, -1.0, 1.0)}

    return prepare


def impair_loss(*, scale: float) -> LossFn:
    """`CE(noise, retain labels) + CE(retain)` on {"noise", "retain": batch}."""

    def loss_fn(student, centres_KxD, batch):
        retain = batch["retain"]
        num_noise = batch["noise"].shape[0]
        # One forward pass over both halves: one set of batch-norm statistics in "train" mode.
        emb = student(jnp.concatenate([batch["noise"], retain["image"]]))
        logits = head_logits(emb, centres_KxD, scale=scale)
        ce_noise = cross_entropy(logits[:num_noise], retain["label"])
        ce_retain = cross_entropy(logits[num_noise:], retain["label"])
        return ce_noise + ce_retain, {"ce_noise": ce_noise, "ce_retain": ce_retain}

    return loss_fn


@register("unsir", check=check_labels, reads=BASELINE_READS)
def run(context: UnlearnContext) -> Backbone:
    """`unsir.impair_epochs` passes over the forget set with noise, then `repair_epochs` passes
    over the retain set."""
    settings = context.config.unsir
    labels = make_labels(context)
    retain = context.retain.source(labels.retain)
    noise = make_noise(context.graphs.eval, scale=labels.scale, steps=settings.noise_steps,
                       lr=settings.noise_lr)
    return run_phases(
        context, tx=sgd(settings.lr, settings.momentum), centres_KxD=labels.centres,
        phases=[Phase("impair", impair_loss(scale=labels.scale),
                      {"forget": context.forget.source(labels.forget), "retain": retain},
                      settings.impair_epochs, prepare=noise),
                Phase("repair", classifier_loss(scale=labels.scale), retain,
                      settings.repair_epochs)])
