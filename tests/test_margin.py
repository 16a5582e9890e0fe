"""ArcFace and CosFace margin logits, plain and with the straight-through margin gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.losses.margin import arcface_logits, cosface_logits, margin_loss


def _cosines(seed=0, batch=6, classes=5):
    return jnp.tanh(jax.random.normal(jax.random.key(seed), (batch, classes)))


def test_arcface_adds_the_angle_to_the_target_only():
    cos = _cosines()
    labels = jnp.array([0, 1, 2, 3, 4, 0])
    logits = arcface_logits(cos, labels, scale=64.0, margin=0.5)
    theta = np.arccos(np.asarray(cos))
    expected = 64.0 * np.cos(theta)
    rows = np.arange(6)
    target = theta[rows, labels]
    fallback = np.cos(target) - np.sin(np.pi - 0.5) * 0.5
    expected[rows, labels] = np.where(target + 0.5 < np.pi, np.cos(target + 0.5), fallback) * 64.0
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)


def test_cosface_subtracts_the_margin_from_the_target():
    cos = _cosines(1)
    labels = jnp.array([4, 3, 2, 1, 0, 0])
    logits = cosface_logits(cos, labels, scale=30.0, margin=0.35)
    expected = 30.0 * np.asarray(cos)
    expected[np.arange(6), labels] -= 30.0 * 0.35
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_straight_through_gradient_is_that_of_the_plain_cosine():
    cos = _cosines(2)
    labels = jnp.array([0, 1, 2, 3, 4, 1])
    straight = jax.grad(lambda c: arcface_logits(c, labels, scale=64.0, margin=0.5,
                                                 straight_through=True).sum())(cos)
    np.testing.assert_allclose(straight, 64.0 * np.ones_like(cos), rtol=1e-6)
    plain = jax.grad(lambda c: arcface_logits(c, labels, scale=64.0, margin=0.5,
                                              straight_through=False).sum())(cos)
    # Plain ArcFace differentiates cos(theta + m) = cos t cos m - sin t sin m: not 1 on targets.
    assert not np.allclose(plain, straight)
    rows = np.arange(6)
    mask = np.zeros(cos.shape, bool)
    mask[rows, labels] = True
    np.testing.assert_allclose(np.asarray(plain)[~mask], 64.0)


@pytest.mark.parametrize("straight", [True, False])
def test_margin_loss_is_finite_and_penalises_the_margin(straight):
    cos = _cosines(3)
    labels = jnp.array([0, 1, 2, 3, 4, 0])
    kwargs = dict(kind="arcface", scale=16.0, straight_through=straight)
    with_margin = margin_loss(cos, labels, margin=0.5, **kwargs)
    without = margin_loss(cos, labels, margin=0.0, **kwargs)
    assert np.isfinite(with_margin) and with_margin > without
    grads = jax.grad(lambda c: margin_loss(c, labels, margin=0.5, **kwargs))(cos)
    assert np.all(np.isfinite(grads))


def test_masked_rows_do_not_count():
    cos = _cosines(4)
    labels = jnp.array([0, 1, 2, 3, 4, 0])
    mask = jnp.array([1, 1, 1, 0, 0, 0], bool)
    kwargs = dict(kind="cosface", scale=16.0, margin=0.35)
    np.testing.assert_allclose(margin_loss(cos, labels, mask_B=mask, **kwargs),
                               margin_loss(cos[:3], labels[:3], **kwargs), rtol=1e-6)


def test_unknown_head_names_the_choices():
    with pytest.raises(ValueError, match="arcface, cosface"):
        margin_loss(_cosines(), jnp.zeros(6, jnp.int32), kind="sphereface", scale=1.0,
                    margin=0.1)
