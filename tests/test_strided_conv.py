"""Tests for cure_jax.models.strided_conv: the stride-2 input gradient by phases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cure_jax.models import strided_conv
from cure_jax.models.iresnet import IResNet
from tests import contexts

_PADS = {1: ((0, 0), (0, 0)), 3: ((1, 1), (1, 1))}


def _case(seed, height, width, size, channels, features, kernel_layout):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, height, width, channels)), jnp.float32)
    shape = ((size, size, channels, features) if kernel_layout == "HWIO"
             else (features, channels, size, size))
    return x, jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _loss(conv, size, kernel_layout):
    def loss(x, kernel):
        out = conv(x, kernel, (2, 2), _PADS[size],
                   dimension_numbers=("NHWC", kernel_layout, "NHWC"))
        return jnp.sum(jnp.sin(out)), out  # a gradient that differs from pixel to pixel
    return loss


@pytest.mark.parametrize("height, width", [(8, 8), (9, 7), (5, 10)])
@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("kernel_layout", ["HWIO", "OIHW"])
@pytest.mark.parametrize("features", [6, strided_conv.SHARES_MIN_CHANNELS])  # both 3 x 3 forms
def test_values_and_gradients_are_lax_ones(height, width, size, kernel_layout, features):
    x, kernel = _case(0, height, width, size, 5, features, kernel_layout)
    ours, lax = (jax.value_and_grad(_loss(conv, size, kernel_layout), (0, 1), has_aux=True)
                 for conv in (strided_conv.conv_general_dilated, jax.lax.conv_general_dilated))
    (loss, out), grads = ours(x, kernel)
    (lax_loss, lax_out), lax_grads = lax(x, kernel)
    np.testing.assert_array_equal(out, lax_out)  # the forward pass is lax's own
    np.testing.assert_array_equal(loss, lax_loss)
    np.testing.assert_array_equal(grads[1], lax_grads[1])  # and so is the kernel gradient
    # The input gradient sums the same products in another order.
    np.testing.assert_allclose(grads[0], lax_grads[0], rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(lax_grads[0]))) > 1.0  # not a comparison of zeros


def _dilated_convolutions(fn, *args) -> list:
    """The convolutions of `fn`'s traced program that dilate their input (strided gradients)."""
    return [eqn for eqn in contexts.convolutions(jax.make_jaxpr(fn)(*args).jaxpr)
            if any(d != 1 for d in eqn.params["lhs_dilation"])]


def test_the_input_gradient_has_no_dilated_convolution():
    x, kernel = _case(1, 8, 8, 3, 4, 4, "HWIO")
    for conv, count in ((strided_conv.conv_general_dilated, 0), (jax.lax.conv_general_dilated, 1)):
        grad = jax.grad(lambda x, k, conv=conv: _loss(conv, 3, "HWIO")(x, k)[0])
        assert len(_dilated_convolutions(grad, x, kernel)) == count


@pytest.mark.parametrize("kwargs", [
    dict(window_strides=(1, 1), padding=((1, 1), (1, 1))),  # not strided
    dict(window_strides=(2, 2), padding="SAME"),
    dict(window_strides=(2, 2), padding=((0, 1), (0, 1))),  # not the IResNet's padding
    dict(window_strides=(2, 2), padding=((1, 1), (1, 1)), rhs_dilation=(2, 2)),
])
def test_other_convolutions_are_lax_ones_gradient_included(kwargs):
    x, kernel = _case(2, 9, 9, 3, 4, 4, "HWIO")

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                 **kwargs)))

    ours = jax.grad(loss(strided_conv.conv_general_dilated), (0, 1))(x, kernel)
    lax = jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, kernel)
    for a, b in zip(ours, lax, strict=True):
        np.testing.assert_array_equal(a, b)


def _iresnet_gradients():
    """Parameter gradients of an IResNet in evaluation mode, with running statistics far from
    their initial values (in training mode the biases before a batch norm have a zero gradient,
    which would compare rounding noise)."""
    model = IResNet("r18", width=0.25, input_size=32, embedding_dim=16, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(5)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            channels = module.mean[...].shape
            module.mean[...] = jnp.asarray(rng.normal(0, 0.5, channels), jnp.float32)
            module.var[...] = jnp.asarray(rng.uniform(0.2, 3.0, channels), jnp.float32)
    eval_model = nnx.view(model, use_running_average=True, deterministic=True)
    graph, params, rest = nnx.split(eval_model, nnx.Param, ...)
    images = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
    direction = jnp.asarray(np.random.default_rng(4).normal(size=(4, 16)), jnp.float32)

    def loss(params):
        return jnp.sum(jnp.sin(nnx.merge(graph, params, rest)(images)) * direction)

    grad = jax.grad(loss)
    return grad(params), len(_dilated_convolutions(grad, params))


def test_an_iresnet_has_no_dilated_convolution_and_lax_gradients(monkeypatch):
    ours, dilated = _iresnet_gradients()
    assert dilated == 0
    # The same model with lax's convolution: 8 dilated convolutions (each of the four stages
    # opens with a stride-2 3 x 3 convolution and a 1 x 1 shortcut), the same gradients.
    monkeypatch.setattr(strided_conv, "conv_general_dilated", jax.lax.conv_general_dilated)
    lax, dilated = _iresnet_gradients()
    assert dilated == 8
    for path, value in jax.tree_util.tree_leaves_with_path(ours):
        expected = dict(jax.tree_util.tree_leaves_with_path(lax))[path]
        scale = float(jnp.max(jnp.abs(expected))) + 1e-12
        np.testing.assert_allclose(value / scale, expected / scale, atol=2e-5,
                                   err_msg=jax.tree_util.keystr(path))
