"""Channels-last execution of NCHW ONNX image ops, for speed on XLA.

ONNX images are NCHW. XLA:CPU runs NHWC convolutions several times faster than NCHW ones, and its
grouped (depthwise) convolution is far slower again than the same sum written as nine shifted
multiplies (measured on the development machine: a 3x3 depthwise convolution over 32 x 56 x 56 x
64 took 0.7-1.1 s as `conv_general_dilated`, 0.02 s as shifted multiplies). So the module keeps
4-D image tensors channels-last while they flow through ops that do not care about the layout
(convolution, batch norm, PReLU and other elementwise ops, global pooling), wrapped in
`ChannelsLast`, and hands any other op their canonical NCHW value. The results are the ONNX
results; only the order of float additions differs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.models import strided_conv
from cure_jax.models.convert import onnx_ops
from cure_jax.models.convert.onnx_graph import Node

ELEMENTWISE_UNARY = ("Relu", "LeakyRelu", "Sigmoid", "Identity")
ELEMENTWISE_BINARY = ("Add", "Sub", "Mul", "Div", "PRelu")


@dataclasses.dataclass(frozen=True)
class ChannelsLast:
    """A 4-D tensor whose ONNX (NCHW) value is `transpose(nhwc, (0, 3, 1, 2))`."""

    nhwc: jax.Array


def canonical(value):
    """The ONNX (NCHW) value of `value`."""
    if isinstance(value, ChannelsLast):
        return jnp.transpose(value.nhwc, (0, 3, 1, 2))
    return value


def _as_channels_last(value, rank: int = 4):
    """`value` in the layout of a `ChannelsLast` tensor it is combined with: an NCHW tensor or a
    constant broadcast against NCHW (e.g. a PReLU slope [C, 1, 1]) moved to NHWC order."""
    if isinstance(value, ChannelsLast):
        return value.nhwc
    xp = np if isinstance(value, np.ndarray | np.generic) else jnp
    value = xp.reshape(value, (1,) * (rank - np.ndim(value)) + tuple(np.shape(value)))
    return xp.transpose(value, (0, 2, 3, 1))


def _depthwise(x_nhwc, w_oihw, strides, padding, dilations):
    """A depthwise convolution (one 2-D filter per channel) as a sum of shifted multiplies."""
    (pt, pb), (pl, pr) = padding
    x = jnp.pad(x_nhwc, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    _, height, width, _ = x.shape
    _, _, kh, kw = w_oihw.shape
    (sh, sw), (dh, dw) = strides, dilations
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            window = x[:, i * dh: i * dh + sh * (out_h - 1) + 1: sh,
                       j * dw: j * dw + sw * (out_w - 1) + 1: sw, :]
            out = out + window * w_oihw[:, 0, i, j]
    return out


def _conv(node: Node, x, w, b=None) -> ChannelsLast:
    x_nhwc = _as_channels_last(x)
    strides = tuple(node.attr("strides", (1, 1)))
    dilations = tuple(node.attr("dilations", (1, 1)))
    padding = onnx_ops.conv_padding(node, x_nhwc.ndim)
    group = node.attr("group", 1)
    channels = x_nhwc.shape[-1]
    if group == channels and w.shape[0] == channels and w.shape[1] == 1:
        out = _depthwise(x_nhwc, w, strides, padding, dilations)
    else:
        # strided_conv: lax's convolution, with a faster stride-2 input gradient on XLA:CPU.
        out = strided_conv.conv_general_dilated(
            x_nhwc, w, window_strides=strides, padding=padding, rhs_dilation=dilations,
            dimension_numbers=("NHWC", "OIHW", "NHWC"), feature_group_count=group)
    return ChannelsLast(out if b is None else out + b)


def takes_channels_last(node: Node, inputs: list) -> bool:
    """Whether `node` runs here, channels-last: a 2-D convolution, or a layout-free op on a
    `ChannelsLast` tensor."""
    if node.op_type == "Conv":
        rank = 4 if isinstance(inputs[0], ChannelsLast) else np.ndim(inputs[0])
        return len(inputs) > 1 and rank == 4 and np.ndim(inputs[1]) == 4
    first = inputs[0] if inputs else None
    if node.op_type in (*ELEMENTWISE_UNARY, "GlobalAveragePool", "BatchNormalization",
                        "Dropout"):
        return isinstance(first, ChannelsLast)
    if node.op_type in ELEMENTWISE_BINARY:
        operands = [v for v in inputs if v is not None]
        return any(isinstance(v, ChannelsLast) for v in operands) and all(
            isinstance(v, ChannelsLast) or np.ndim(v) <= 4 for v in operands)
    return False


def run_channels_last(node: Node, inputs: list) -> tuple:
    """Outputs of a node that `takes_channels_last` (stateless ops only)."""
    if node.op_type == "Conv":
        return (_conv(node, *inputs),)
    if node.op_type == "GlobalAveragePool":
        return (ChannelsLast(inputs[0].nhwc.mean(axis=(1, 2), keepdims=True)),)
    if node.op_type in ELEMENTWISE_UNARY:
        return (ChannelsLast(onnx_ops.run_node(node, [inputs[0].nhwc])[0]),)
    operands = [_as_channels_last(v) for v in inputs]
    return (ChannelsLast(onnx_ops.run_node(node, operands)[0]),)
