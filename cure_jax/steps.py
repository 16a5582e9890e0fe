"""The one training step every phase shares: a gradient of an objective, one optimiser update.

The teacher, CURE and every baseline differ only in their objective; the skeleton around it (the
per-step key, the gradient, the update, the new state) is written once, here. A step is a pure
function `step(state, batch, root_key) -> (state, metrics)`, jitted once with its state donated;
the state is a NamedTuple with at least `step`, `params`, `batch_stats` and `opt_state` fields
(the rest rides along unchanged).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

# `objective(params, batch_stats, state, batch, key) -> (loss, (batch_stats, metrics))`:
# differentiated with respect to `params`; returns the batch-norm statistics to keep (the input
# ones when they are frozen) and a dict of scalar metrics.
Objective = Callable[..., tuple[jax.Array, tuple]]
# `prepare(state, batch, key) -> batch`: work on the batch before the gradient (UNSIR's noise).
Prepare = Callable[..., dict]


def make_step(objective: Objective, tx: optax.GradientTransformation, *,
              prepare: Prepare | None = None):
    """The jitted step `step(state, batch, root_key) -> (state, metrics)`, state donated.

    The step's key is `fold_in(root_key, state.step)`, so that a resumed run draws the same
    randomness without saving a key. `metrics` holds "loss", the objective's metrics and
    "params_finite" (whether every updated parameter and statistic is finite).
    """

    def step(state, batch: dict, root_key: jax.Array):
        key = jax.random.fold_in(root_key, state.step)
        if prepare is not None:
            batch = prepare(state, batch, key)
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, state,
                                                        batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state._replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                   opt_state=opt_state)
        # Read by the loop before any checkpoint: an update may overflow while its loss is finite.
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in
                                    jax.tree.leaves((params, batch_stats))]))
        return new_state, {"loss": loss, **metrics, "params_finite": finite}

    return jax.jit(step, donate_argnums=0)
