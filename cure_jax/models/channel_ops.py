"""Per-channel sums and broadcasts as matrix products, and the batch norm built on them.

Why: with the XLA flag the package sets (`cure_jax/__init__.py`), XLA:CPU rewrites every large
reduction into a `reduce-window` loop followed by a small reduce (its tree-reduction pass, for
accuracy), and those loops are slow: in the default teacher step the batch norms' statistics and
the gradients of their scales, biases and of the PReLU slopes became 246 `reduce-window` ops,
about a fifth of the step on one core. A per-channel sum written as `ones[N] @ x[N, C]` (in a
few row blocks where the channels are few, `SUM_BLOCKS`) is a matrix product instead, 2-5x
faster on the same arrays (docs/PERFORMANCE.md: the teacher step 11-13% faster on one core,
within noise on two). Autodiff would turn the broadcasts of a per-channel vector back into
reductions in the backward pass, so `broadcast_channels` has its own gradient (a `channel_sum`),
and `channel_sum`'s gradient is a broadcast.

`BatchNorm` is `nnx.BatchNorm` (same variables, same checkpoints, same `nnx.view` keys) whose
call computes the same thing through these two functions for a channels-last input; other
uses (a feature axis other than the last, masks, named axes) go to `nnx.BatchNorm` itself. In
training mode (float32, one-pass variance) its gradient is written by hand as well
(`_training_batch_norm`), with two channel sums where autodiff's took three.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

# A channel sum over at most SUM_BLOCK_CHANNELS channels splits its rows into SUM_BLOCKS blocks,
# one matrix-vector product each, then adds the blocks' sums. XLA:CPU splits a single
# [1, M] x [M, C] product of few columns over two threads badly (3.6 ms at [262144, 16] on two
# cores, 2.7 ms on one); a batch of eight runs on both cores (1.8-2.0 ms): the default teacher
# step took 3-6% less time. With 64 channels and more (IResNet-50) the blocks made the CURE step
# 2% slower, so wider sums stay one product (docs/PERFORMANCE.md).
SUM_BLOCKS = 8
SUM_BLOCK_CHANNELS = 32


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _channel_sum(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    channels = shape[-1]
    rows = x.size // channels
    # Equal blocks: a divisor of the row count (1 where it is odd).
    blocks = math.gcd(rows, SUM_BLOCKS) if channels <= SUM_BLOCK_CHANNELS else 1
    # HIGHEST: GPUs would otherwise multiply float32 in TF32 (10-bit mantissas), which batch-norm
    # statistics cannot afford; on the CPU it changes nothing.
    if blocks == 1:  # one product, the program it always was (IResNet-50's steps unchanged)
        total = jnp.dot(jnp.ones((rows,), x.dtype), x.reshape(rows, channels),
                        precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
        return total.astype(x.dtype)
    block_sums = jnp.einsum("bm,bmc->bc", jnp.ones((blocks, rows // blocks), x.dtype),
                            x.reshape(blocks, rows // blocks, channels),
                            precision=jax.lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float32)
    return jnp.sum(block_sums, axis=0).astype(x.dtype)


def _channel_sum_fwd(x, shape):
    return _channel_sum(x, shape), None


def _channel_sum_bwd(shape, _, cotangent):
    return (jnp.broadcast_to(cotangent, shape),)


_channel_sum.defvjp(_channel_sum_fwd, _channel_sum_bwd)


def channel_sum(x: jax.Array) -> jax.Array:
    """Sum over every axis but the last.

    Args:
      x: [..., C].

    Returns:
      [C], in x's dtype (accumulated in float32).
    """
    return _channel_sum(x, x.shape)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _broadcast_channels(values: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jnp.broadcast_to(values, shape)


def _broadcast_channels_fwd(values, shape):
    return _broadcast_channels(values, shape), None


def _broadcast_channels_bwd(shape, _, cotangent):
    return (channel_sum(cotangent),)


_broadcast_channels.defvjp(_broadcast_channels_fwd, _broadcast_channels_bwd)


def broadcast_channels(values: jax.Array, shape: tuple[int, ...],
                       dtype: jnp.dtype | None = None) -> jax.Array:
    """`values` [C] broadcast to `shape` [..., C] (cast to `dtype` first when given); its gradient
    is a `channel_sum`, not a reduction."""
    if dtype is not None:
        values = values.astype(dtype)
    return _broadcast_channels(values, tuple(shape))


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` computed through `channel_sum` and `broadcast_channels` (module docstring).

    The arithmetic is nnx.BatchNorm's: statistics in at least float32, the variance as
    E[x^2] - E[x]^2 clipped at 0 (or E[(x - E[x])^2] with `use_fast_variance=False`), running
    averages updated with `momentum`, then `(x - mean) * (rsqrt(var + epsilon) * scale) + bias`
    in the promoted dtype, cast to the module's dtype. A float32 call with the batch's statistics
    and the one-pass variance computes `x * m + (bias - mean * m)` instead, the same to rounding,
    with its own gradient (`_training_batch_norm`).
    """

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        feature_axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        if mask is not None or self.axis_name is not None or feature_axes not in ((-1,),
                                                                                 (x.ndim - 1,)):
            return super().__call__(x, use_running_average, mask=mask)
        if self._trains_in_float32(x, use_running_average):
            y, mean, var = _training_batch_norm(x, self._scale_or_ones(), self._bias_or_zeros(),
                                                self.epsilon)
            self._update_running_statistics(mean, var)
            return y
        x, mean, multiplier, scale, bias = self._normalisation(x, use_running_average)
        compute_dtype = jnp.result_type(x, mean, multiplier)
        y = x - broadcast_channels(mean, x.shape, compute_dtype)
        y = y * broadcast_channels(multiplier, x.shape, compute_dtype)
        if bias is not None:
            y = y + broadcast_channels(bias, x.shape, compute_dtype)
        out_dtype = self.dtype or jnp.result_type(*(a for a in (x, scale, bias) if a is not None))
        return y.astype(out_dtype)

    def affine(self, x, use_running_average: bool | None = None):
        """(multiplier [C], shift [C]) such that this batch norm's output is
        `x * multiplier + shift` (to rounding), with the running statistics updated as a call
        updates them: for folding the normalisation into the convolution that follows.
        Channels-last input, float32 (no dtype), no mask or named axis."""
        if self.dtype is not None or self.axis_name is not None or self.axis not in (-1,
                                                                                    x.ndim - 1):
            raise ValueError("BatchNorm.affine takes a float32 batch norm over the last axis")
        x, mean, multiplier, _, bias = self._normalisation(x, use_running_average)
        shift = -mean * multiplier
        return multiplier, (shift if bias is None else shift + bias)

    def _normalisation(self, x, use_running_average):
        """(x, mean, multiplier, scale, bias) promoted to the module's dtype: the statistics
        (the batch's, updating the running averages, or the running ones) and
        `rsqrt(var + epsilon) * scale`."""
        if use_running_average is None:
            use_running_average = self.use_running_average
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype)
        if not use_running_average:
            stats_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
            x_stats = x.astype(stats_dtype)
            if self.use_fast_variance:
                mean, var = _batch_statistics(x_stats)
            else:  # two passes, as PyTorch and onnxruntime compute it
                count = x.size // x.shape[-1]
                mean = channel_sum(x_stats) / count
                centred = x_stats - broadcast_channels(mean, x.shape)
                var = channel_sum(centred * centred) / count
            self._update_running_statistics(mean, var)
        multiplier = jax.lax.rsqrt(var + self.epsilon)
        if scale is not None:
            multiplier = multiplier * scale
        return x, mean, multiplier, scale, bias

    def _trains_in_float32(self, x, use_running_average) -> bool:
        """Whether this call takes `_training_batch_norm`: the batch's statistics, one-pass
        variance, float32 input, parameters and computation."""
        if use_running_average is None:
            use_running_average = self.use_running_average
        float32 = all(a is None or a.dtype == jnp.float32
                      for a in (x, self.scale, self.bias, self.mean, self.var))
        return (not use_running_average and self.use_fast_variance and float32
                and self.dtype in (None, jnp.float32))

    def _scale_or_ones(self) -> jax.Array:
        return self.scale[...] if self.scale is not None else jnp.ones_like(self.mean[...])

    def _bias_or_zeros(self) -> jax.Array:
        return self.bias[...] if self.bias is not None else jnp.zeros_like(self.mean[...])

    def _update_running_statistics(self, mean, var) -> None:
        self.mean[...] = jax.lax.stop_gradient(
            self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = jax.lax.stop_gradient(
            self.momentum * self.var[...] + (1 - self.momentum) * var)


def _batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[C] mean and variance of channels-last `x` over every other axis: E[x^2] - E[x]^2, clipped
    at 0 (nnx.BatchNorm's fast variance)."""
    count = x.size // x.shape[-1]
    mean = channel_sum(x) / count
    return mean, jnp.maximum(0.0, channel_sum(x * x) / count - mean * mean)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _training_batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array,
                         epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A training-mode batch norm of channels-last float32 `x` [..., C] with the batch's
    statistics, as `x * m + (bias - mean * m)` with `m = scale * rsqrt(var + epsilon)`.

    Returns (y [..., C], mean [C], var [C]); mean and var only update the running averages, so
    the gradient ignores their cotangents. Why its own gradient: autodiff through the
    statistics summed the output gradient with three different per-channel factors, each sum a
    product written out and then a `channel_sum`; the gradient below needs two sums, `sum(g)`
    and `sum(g * (x - mean))`, and one pass for the input gradient (the default teacher step
    4-10% faster; docs/PERFORMANCE.md).
    """
    mean, var = _batch_statistics(x)
    multiplier = jax.lax.rsqrt(var + epsilon) * scale
    shift = bias - mean * multiplier
    y = x * broadcast_channels(multiplier, x.shape) + broadcast_channels(shift, x.shape)
    return y, mean, var


def _training_batch_norm_fwd(x, scale, bias, epsilon):
    y, mean, var = _training_batch_norm(x, scale, bias, epsilon)
    return (y, mean, var), (x, scale, mean, var)


def _training_batch_norm_bwd(epsilon, residuals, cotangents):
    x, scale, mean, var = residuals
    g = cotangents[0]
    count = x.size // x.shape[-1]
    inverse_std = jax.lax.rsqrt(var + epsilon)
    multiplier = inverse_std * scale
    sum_g = channel_sum(g)
    # The multiplier's gradient through y and through the shift. Centred, not
    # sum(g * x) - mean * sum(g), which cancels where the mean is large against the spread.
    d_multiplier = channel_sum(g * (x - jnp.broadcast_to(mean, x.shape)))
    # The clip at 0 passes no gradient, as jnp.maximum's does not where it clips.
    d_var = jnp.where(var > 0, -0.5 * d_multiplier * scale * inverse_std**3, 0.0)
    # The mean reaches y through the shift and the variance (E[x^2] - mean^2).
    d_mean = -multiplier * sum_g - 2.0 * mean * d_var
    d_x = (g * jnp.broadcast_to(multiplier, x.shape)
           + jnp.broadcast_to(d_mean / count, x.shape)
           + x * jnp.broadcast_to(2.0 * d_var / count, x.shape))
    return d_x, d_multiplier * inverse_std, sum_g


_training_batch_norm.defvjp(_training_batch_norm_fwd, _training_batch_norm_bwd)
