"""What the ONNX importer's modules share: the node description, the importer's error, and
`DequantizeLinear` as a NumPy function (folded at reading, run as an op otherwise)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class OnnxImportError(ValueError):
    """The ONNX graph uses something the importer does not support, or is malformed."""


@dataclasses.dataclass(frozen=True)
class Node:
    """One ONNX node: its op, its input and output tensor names and its attributes.

    Empty input names (ONNX's way of skipping an optional input) are kept as "".
    """

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...]

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)

    def describe(self) -> str:
        return f"node {self.name!r} (op {self.op_type})"


def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None,
                      *, axis: int = 1, block_size: int = 0) -> np.ndarray:
    """`(x - zero_point) * scale` in float32, as ONNX `DequantizeLinear` (opset 21).

    Args:
      x: quantized integers, any shape.
      scale: a scalar (per tensor), a 1-D array of length `x.shape[axis]` (per axis), or, with
        `block_size`, the shape of `x` with `x.shape[axis]` replaced by
        `ceil(x.shape[axis] / block_size)` (blocks of `block_size` along `axis`).
      zero_point: integers of the shape of `scale`, or None for 0.
      axis: the quantization axis (negative counts from the end).
      block_size: the block length along `axis`, 0 for per-tensor or per-axis.

    Returns:
      float32 array of the shape of `x`.

    Raises:
      OnnxImportError: on shapes that fit none of the three layouts.
    """
    x = np.asarray(x)
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.zeros_like(scale, dtype=np.int64) if zero_point is None else np.asarray(zero_point)
    if zero.shape != scale.shape:
        raise OnnxImportError(f"zero_point shape {zero.shape} differs from scale {scale.shape}")
    axis = axis % max(x.ndim, 1)
    if block_size > 0:
        expected = list(x.shape)
        expected[axis] = -(-x.shape[axis] // block_size)
        if list(scale.shape) != expected:
            raise OnnxImportError(f"blocked scale shape {scale.shape} does not fit x {x.shape} "
                                  f"with axis={axis}, block_size={block_size}: expected "
                                  f"{tuple(expected)}")
        # Each scale covers block_size consecutive entries along the axis; the last block may
        # be shorter, hence the cut after repeating.
        length = x.shape[axis]
        scale = np.repeat(scale, block_size, axis=axis).take(np.arange(length), axis=axis)
        zero = np.repeat(zero, block_size, axis=axis).take(np.arange(length), axis=axis)
    elif scale.size > 1:
        if scale.ndim != 1 or scale.size != x.shape[axis]:
            raise OnnxImportError(f"per-axis scale of shape {scale.shape} does not fit x "
                                  f"{x.shape} along axis {axis}")
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    else:  # per tensor: one scale and zero point for every entry
        scale, zero = scale.reshape(()), zero.reshape(())
    # Subtract in int64: int8 - int8 overflows in its own type.
    diff = x.astype(np.int64) - zero.astype(np.int64)
    return (diff.astype(np.float32) * scale).astype(np.float32)
