"""Per-channel sums as matrix products, and the BatchNorm and IResNet built on them: the same
values and gradients as plain reductions and nnx.BatchNorm, and no reduce-window loops left."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cure_jax.models import iresnet
from cure_jax.models.channel_ops import BatchNorm, broadcast_channels, channel_sum


def _random(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


# Few channels, with row counts that split into 8 blocks (120), 4 (12) and none (45); and more
# channels than `channel_ops.SUM_BLOCK_CHANNELS`, summed in one product.
@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (2, 3, 2, 3), (3, 5, 3, 3), (2, 2, 4, 40)])
def test_channel_sum_and_broadcast_match_plain_reductions_with_their_gradients(shape):
    x = _random(shape)
    np.testing.assert_allclose(channel_sum(x), jnp.sum(x, (0, 1, 2)), rtol=1e-5, atol=1e-5)
    weights = _random(x.shape, 1)
    grad = jax.grad(lambda x: jnp.sum(channel_sum(x) * jnp.arange(float(shape[-1]))))(x)
    np.testing.assert_array_equal(grad, jnp.broadcast_to(jnp.arange(float(shape[-1])), x.shape))
    values = _random(shape[-1:], 2)

    def loss(values, broadcast):
        return jnp.sum(broadcast(values) * weights * x)

    ours = jax.value_and_grad(loss)(values, lambda v: broadcast_channels(v, x.shape))
    plain = jax.value_and_grad(loss)(values, lambda v: jnp.broadcast_to(v, x.shape))
    np.testing.assert_allclose(ours[0], plain[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], plain[1], rtol=1e-5, atol=1e-6)


def _pair(features, **kwargs):
    """(ours, nnx.BatchNorm) with the same random scale, bias and running statistics."""
    ours = BatchNorm(features, rngs=nnx.Rngs(0), **kwargs)
    theirs = nnx.BatchNorm(features, rngs=nnx.Rngs(0), **kwargs)
    for i, name in enumerate(("scale", "bias", "mean", "var")):
        variable = getattr(ours, name)
        if variable is None:
            continue
        value = jnp.abs(_random((features,), 10 + i)) + 0.5 if name in ("scale", "var") else \
            _random((features,), 10 + i)
        variable[...] = value
        getattr(theirs, name)[...] = value
    return ours, theirs


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("fast_variance", [True, False])
@pytest.mark.parametrize("use_scale", [True, False])
def test_batch_norm_matches_nnx_values_statistics_and_gradients(train, fast_variance, use_scale):
    features = 8
    x = _random((6, 5, 5, features)) * 2.0 + 1.0
    cotangent = _random(x.shape, 3)
    results = []
    for module in _pair(features, use_fast_variance=fast_variance, use_scale=use_scale,
                        momentum=0.9, epsilon=1e-5):
        graph, params, rest = nnx.split(module, nnx.Param, ...)

        def loss(params, x, rest, graph=graph):
            module = nnx.merge(graph, params, rest, copy=True)
            y = module(x, use_running_average=not train)
            return jnp.sum(y * cotangent), (y, module.mean[...], module.var[...])

        value_and_grads = jax.value_and_grad(loss, (0, 1), has_aux=True)
        (value, (y, mean, var)), grads = value_and_grads(params, x, rest)
        results.append((value, y, mean, var, grads))
    ours, theirs = results
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_batch_norm_in_bfloat16_keeps_nnx_dtypes_and_values():
    x = _random((4, 5, 5, 8))
    ours, theirs = _pair(8, dtype=jnp.bfloat16, momentum=0.9, epsilon=1e-5)
    for train in (True, False):
        a, b = ours(x, use_running_average=not train), theirs(x, use_running_average=not train)
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), rtol=1e-2,
                                   atol=1e-2)
        np.testing.assert_allclose(ours.mean[...], theirs.mean[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.var[...], theirs.var[...], rtol=1e-5, atol=1e-6)


def _iresnet_loss_and_grads(monkeypatch, plain: bool):
    if plain:  # the model as nnx.BatchNorm and jnp broadcasting build it
        monkeypatch.setattr(iresnet, "BatchNorm", nnx.BatchNorm)
        monkeypatch.setattr(iresnet, "broadcast_channels",
                            lambda values, shape, dtype=None: values.astype(dtype))
    model = iresnet.IResNet("r18", width=0.125, input_size=32, embedding_dim=16,
                            rngs=nnx.Rngs(0))
    monkeypatch.undo()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    images = jnp.tanh(_random((8, 32, 32, 3), 4))
    target = _random((8, 16), 5)

    def loss(params, rest):
        return jnp.mean((nnx.merge(graph, params, rest, copy=True)(images) - target) ** 2)

    return jax.jit(jax.value_and_grad(loss))(params, rest)


@pytest.mark.slow
def test_iresnet_training_loss_and_gradients_match_the_plain_model(monkeypatch):
    """The step's numbers move only by float rounding: the whole backbone in training mode
    (batch statistics), every parameter's gradient."""
    value, grads = _iresnet_loss_and_grads(monkeypatch, plain=False)
    plain_value, plain_grads = _iresnet_loss_and_grads(monkeypatch, plain=True)
    np.testing.assert_allclose(value, plain_value, rtol=1e-5)
    flat, plain_flat = (list(jax.tree.leaves_with_path(g)) for g in (grads, plain_grads))
    # Some gradients are zero but for rounding (a bias followed by a training-mode batch norm):
    # those are held to the largest gradient's scale, the others to their own.
    largest = max(float(jnp.max(jnp.abs(b))) for _, b in plain_flat)
    for (path, a), (_, b) in zip(flat, plain_flat, strict=True):
        error = float(jnp.max(jnp.abs(a - b)))
        assert error <= 1e-4 * float(jnp.max(jnp.abs(b))) + 1e-6 * largest, \
            (jax.tree_util.keystr(path), error, largest)


def test_training_gradient_has_no_reduce_window_loops():
    """What the module is for: on XLA:CPU a plain per-channel reduction compiles to a
    reduce-window loop, ours to matrix products."""
    x = _random((64, 32, 32, 8))  # XLA:CPU rewrites reductions over 65,536 values, not 16,384
    module = BatchNorm(8, rngs=nnx.Rngs(0))
    plain = nnx.BatchNorm(8, rngs=nnx.Rngs(0))

    def compiled_text(module):
        graph, params, rest = nnx.split(module, nnx.Param, ...)

        def loss(params, x, rest):
            module = nnx.merge(graph, params, rest, copy=True)
            return jnp.sum(module(x, use_running_average=False) ** 3)

        return jax.jit(jax.grad(loss, (0, 1))).lower(params, x, rest).compile().as_text()

    if jax.default_backend() != "cpu" or "reduce-window" not in compiled_text(plain):
        pytest.skip("this backend does not rewrite reductions into reduce-window loops")
    assert "reduce-window" not in compiled_text(module)
