"""Per-channel sums and broadcasts as matrix products, and the batch norm built on them.

Why: with the XLA flag the package sets (`cure_jax/__init__.py`), XLA:CPU rewrites every large
reduction into a `reduce-window` loop followed by a small reduce (its tree-reduction pass, for
accuracy), and those loops are slow: in the default teacher step the batch norms' statistics and
the gradients of their scales, biases and of the PReLU slopes became 246 `reduce-window` ops,
about a fifth of the step on one core. A per-channel sum written as `ones[N] @ x[N, C]` is a
matrix product instead, 2-5x faster on the same arrays (docs/PERFORMANCE.md: the teacher
step 11-13% faster on one core, within noise on two). Autodiff would turn the broadcasts of a
per-channel vector back into reductions in the backward pass, so `broadcast_channels` has its
own gradient (a `channel_sum`), and `channel_sum`'s gradient is a broadcast.

`BatchNorm` is `nnx.BatchNorm` (same variables, same checkpoints, same `nnx.view` keys) whose
call computes the same thing through these two functions for a channels-last input; other
uses (a feature axis other than the last, masks, named axes) go to `nnx.BatchNorm` itself.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _channel_sum(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    channels = shape[-1]
    ones = jnp.ones((x.size // channels,), x.dtype)
    # HIGHEST: GPUs would otherwise multiply float32 in TF32 (10-bit mantissas), which batch-norm
    # statistics cannot afford; on the CPU it changes nothing.
    total = jnp.dot(ones, x.reshape(-1, channels), precision=jax.lax.Precision.HIGHEST,
                    preferred_element_type=jnp.float32)
    return total.astype(x.dtype)


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
    in the promoted dtype, cast to the module's dtype.
    """

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        feature_axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        if mask is not None or self.axis_name is not None or feature_axes not in ((-1,),
                                                                                 (x.ndim - 1,)):
            return super().__call__(x, use_running_average, mask=mask)
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
            count = x.size // x.shape[-1]
            mean = channel_sum(x_stats) / count
            if self.use_fast_variance:
                mean_of_squares = channel_sum(x_stats * x_stats) / count
                var = jnp.maximum(0.0, mean_of_squares - mean * mean)
            else:  # two passes, as PyTorch and onnxruntime compute it
                centred = x_stats - broadcast_channels(mean, x.shape)
                var = channel_sum(centred * centred) / count
            self.mean[...] = jax.lax.stop_gradient(
                self.momentum * self.mean[...] + (1 - self.momentum) * mean)
            self.var[...] = jax.lax.stop_gradient(
                self.momentum * self.var[...] + (1 - self.momentum) * var)
        multiplier = jax.lax.rsqrt(var + self.epsilon)
        if scale is not None:
            multiplier = multiplier * scale
        return x, mean, multiplier, scale, bias
