"""Stride-2 convolutions with an input gradient that XLA:CPU computes fast.

Autodiff gives the input gradient of a strided convolution as a convolution of the output
gradient dilated with zeros (`lhs_dilation`), and XLA:CPU runs such convolutions outside its
fast path: for the default model's first stride-2 layer (64 x 64 x 16, batch 64) 45-55 ms where
PyTorch takes 4 ms, for IResNet-50's (112 x 112 x 64, batch 32) 270-300 ms against 92 ms
(docs/PERFORMANCE.md). `conv_general_dilated` here is `jax.lax.conv_general_dilated` with, on
CPU, a custom gradient for the two stride-2 shapes of the IResNets (3 x 3 with padding 1, and
the 1 x 1 shortcut), computed by sub-pixel phases instead:

- 3 x 3: each output-gradient pixel g[i, j] reaches the nine input pixels (2i + a - 1,
  2j + b - 1), a, b in 0..2, through the kernel's tap (a, b). One product
  `g[M, C'] @ W[9 C, C']^T` gives every tap's share; the input pixels of each parity (even or
  odd row, even or odd column) are then sums of one, two or four shares shifted by one pixel,
  and interleaving the four parities gives the input gradient. The multiply-adds are those of
  the convolution itself, none wasted on zeros. With few channels, one product of the output
  gradient and its shifts with a block matrix of the taps gives the four parities at once.
- 1 x 1: the product with the kernel lands on the even pixels; the odd ones get no gradient.

The forward pass and the kernel gradient stay XLA's own convolutions (their kernel gradient is
faster than an explicit product here). Elsewhere (other shapes, dilations, groups, and on GPUs
and TPUs, whose convolution libraries handle strides natively) it is `jax.lax`'s function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NHWC = (0, 3, 1, 2)  # ConvDimensionNumbers' spec of an NHWC array: batch, feature, spatial
_PAD = {1: ((0, 0), (0, 0)), 3: ((1, 1), (1, 1))}  # the kernel sizes handled, with their padding
# Below this many output-gradient channels the 3 x 3 input gradient is one product with a block
# matrix instead of the nine taps' shares: a product over so few channels is bound by writing
# its 9 C shares per pixel, the block form writes 4 C (16 channels at 64 px, batch 64: 6-9 ms
# against 17-19 ms; from 32 channels on the shares are as fast or faster).
SHARES_MIN_CHANNELS = 32


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, out_sharding=None):
    """`jax.lax.conv_general_dilated`, same arguments and result; its stride-2 input gradient
    by phases where that is faster (module docstring)."""
    def plain():
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type,
            out_sharding=out_sharding)

    if not (jax.default_backend() == "cpu" and lhs.ndim == 4 and rhs.ndim == 4
            and feature_group_count == 1 and batch_group_count == 1
            and preferred_element_type is None and out_sharding is None
            and tuple(window_strides) == (2, 2)
            and lhs_dilation in (None, 1, (1, 1)) and rhs_dilation in (None, 1, (1, 1))
            and not isinstance(padding, str)):
        return plain()
    numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if tuple(numbers.lhs_spec) != _NHWC or tuple(numbers.out_spec) != _NHWC:
        return plain()
    out_dim, in_dim, height_dim, width_dim = numbers.rhs_spec
    kernel_hwio = jnp.transpose(rhs, (height_dim, width_dim, in_dim, out_dim))
    size = kernel_hwio.shape[0]
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)
    if kernel_hwio.shape[1] != size or _PAD.get(size) != pads:
        return plain()
    return _stride2_conv(lhs, kernel_hwio, precision)


def _forward(x_NxHxWxC, kernel_KxKxCxD, precision):
    size = kernel_KxKxCxD.shape[0]
    return jax.lax.conv_general_dilated(x_NxHxWxC, kernel_KxKxCxD, (2, 2), _PAD[size],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _stride2_conv(x_NxHxWxC, kernel_KxKxCxD, precision):
    """[N, H, W, C] * [K, K, C, D] -> [N, ceil(H / 2), ceil(W / 2), D], stride 2, K = 1 or 3."""
    return _forward(x_NxHxWxC, kernel_KxKxCxD, precision)


def _stride2_conv_fwd(x_NxHxWxC, kernel_KxKxCxD, precision):
    return _forward(x_NxHxWxC, kernel_KxKxCxD, precision), (x_NxHxWxC, kernel_KxKxCxD)


def _stride2_conv_bwd(precision, residuals, g_NxIxJxD):
    x_NxHxWxC, kernel_KxKxCxD = residuals
    _, kernel_vjp = jax.vjp(lambda k: _forward(x_NxHxWxC, k, precision), kernel_KxKxCxD)
    (kernel_grad,) = kernel_vjp(g_NxIxJxD)
    input_grad = input_gradient(g_NxIxJxD, kernel_KxKxCxD, x_NxHxWxC.shape[1:3], precision)
    return input_grad.astype(x_NxHxWxC.dtype), kernel_grad


_stride2_conv.defvjp(_stride2_conv_fwd, _stride2_conv_bwd)


def input_gradient(g_NxIxJxD, kernel_KxKxCxD, input_hw: tuple[int, int], precision=None):
    """[N, H, W, C] gradient of a stride-2 convolution's input (3 x 3 kernel with padding 1, or
    1 x 1 without), from the gradient of its output [N, I, J, D], I = ceil(H / 2)."""
    n, rows, cols, d = g_NxIxJxD.shape
    size, _, c, _ = kernel_KxKxCxD.shape
    height, width = input_hw
    if size == 3 and d < SHARES_MIN_CHANNELS:
        full = _parities_by_one_product(g_NxIxJxD, kernel_KxKxCxD, precision)
        return full[:, :height, :width]
    # Every tap's share at once: shares[..., a, b, :] = g[i, j] @ W[a, b]^T.
    shares = jnp.matmul(g_NxIxJxD.reshape(-1, d), kernel_KxKxCxD.reshape(-1, d).T,
                        precision=precision).reshape(n, rows, cols, size, size, c)
    if size == 1:
        zero = jnp.zeros_like(shares[:, :, :, 0, 0])
        even_even, even_odd, odd_even, odd_odd = shares[:, :, :, 0, 0], zero, zero, zero
    else:
        def tap(a, b):
            return shares[:, :, :, a, b]

        def next_row(x):  # x[i + 1, j], zero past the last row
            return jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))[:, 1:]

        def next_col(x):  # x[i, j + 1], zero past the last column
            return jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 0)))[:, :, 1:]

        # Input row 2i is reached only by tap row 1 of output row i; input row 2i + 1 by tap
        # row 2 of output row i and tap row 0 of output row i + 1. Columns alike.
        even_even = tap(1, 1)
        even_odd = tap(1, 2) + next_col(tap(1, 0))
        odd_even = tap(2, 1) + next_row(tap(0, 1))
        odd_odd = (tap(2, 2) + next_row(tap(0, 2)) + next_col(tap(2, 0))
                   + next_row(next_col(tap(0, 0))))
    # Interleave the parities: [N, I, 2, J, 2, C] -> [N, 2I, 2J, C], cut to the input's size.
    even_rows = jnp.stack([even_even, even_odd], axis=3)
    odd_rows = jnp.stack([odd_even, odd_odd], axis=3)
    full = jnp.stack([even_rows, odd_rows], axis=2).reshape(n, 2 * rows, 2 * cols, c)
    return full[:, :height, :width]


def _parities_by_one_product(g_NxIxJxD, kernel_3x3xCxD, precision=None):
    """The 3 x 3 input gradient of `input_gradient`, uncut [N, 2I, 2J, C], as one product of
    the output gradient and its three one-pixel shifts [N I J, 4D] with a [4D, 4C] block matrix
    of the taps (7 of its 16 blocks zero), whose four column blocks are the four parities."""
    n, rows, cols, d = g_NxIxJxD.shape
    c = kernel_3x3xCxD.shape[2]
    padded = jnp.pad(g_NxIxJxD, ((0, 0), (0, 1), (0, 1), (0, 0)))
    # g[i, j], g[i + 1, j], g[i, j + 1], g[i + 1, j + 1], zero past the edges.
    shifts = jnp.concatenate([g_NxIxJxD, padded[:, 1:, :-1], padded[:, :-1, 1:],
                              padded[:, 1:, 1:]], axis=-1).reshape(-1, 4 * d)

    def tap(a, b):
        return kernel_3x3xCxD[a, b].T  # [D, C]

    zero = jnp.zeros((d, c), kernel_3x3xCxD.dtype)
    # Rows: the shift each block multiplies; columns: the parity it adds to (as in
    # `input_gradient`: even-even, even-odd, odd-even, odd-odd).
    blocks = [[tap(1, 1), tap(1, 2), tap(2, 1), tap(2, 2)],
              [zero, zero, tap(0, 1), tap(0, 2)],
              [zero, tap(1, 0), zero, tap(2, 0)],
              [zero, zero, zero, tap(0, 0)]]
    taps_4Dx4C = jnp.block(blocks)
    parities = jnp.matmul(shifts, taps_4Dx4C, precision=precision)
    parities = parities.reshape(n, rows, cols, 2, 2, c)  # [.., row parity, column parity, C]
    return parities.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * rows, 2 * cols, c)
