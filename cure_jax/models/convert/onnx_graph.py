"""An ONNX file as a static graph description: its nodes in order and its folded constants.

Reading does three things the runtime module then need not care about:

1. `DequantizeLinear` of int8 weights (per tensor, per axis, or in blocks along an axis, the
   `axis` / `block_size` attributes of opset 21) becomes a float32 constant.
2. Every node whose inputs are all constants (the dequantization itself, the `Reshape` of a
   dequantized weight to its kernel shape, `Constant` nodes) is evaluated once, in NumPy, and its
   outputs join the constants. What remains are the nodes that depend on the image.
3. Graph inputs that no node reads are dropped (OpenCV Zoo's int8 models still list their float
   weight names as inputs); exactly one image input must remain.
"""

from __future__ import annotations

import dataclasses
import os
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


@dataclasses.dataclass(frozen=True, eq=False)
class OnnxGraph:
    """The image-dependent part of an ONNX graph and its constants.

    Compared and hashed by identity (`eq=False`): it is a static attribute of a module graph, and
    its NumPy constants have no value hash.

    Attributes:
      path: the file it was read from (for messages).
      input_name: the image input.
      input_shape: its static shape, a dynamic dimension as None (e.g. (None, 3, 112, 112)).
      output_name: the embedding output.
      nodes: the nodes that depend on the input, in topological order.
      constants: every constant tensor by name (initializers, dequantized and folded values).
      folded: names of the nodes that were folded into constants at import.
      opset: the default-domain opset version of the file.
    """

    path: str
    input_name: str
    input_shape: tuple[int | None, ...]
    output_name: str
    nodes: tuple[Node, ...]
    constants: dict[str, np.ndarray]
    folded: tuple[str, ...]
    opset: int


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


def _attributes(node_proto) -> tuple[tuple[str, Any], ...]:
    from onnx import helper, numpy_helper

    attrs = []
    for attribute in node_proto.attribute:
        value = helper.get_attribute_value(attribute)
        if hasattr(value, "dims") and hasattr(value, "data_type"):  # a TensorProto
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = tuple(v.decode() if isinstance(v, bytes) else v for v in value)
        attrs.append((attribute.name, value))
    return tuple(attrs)


def _static_shape(value_info) -> tuple[int | None, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def _image_input(graph, constants: dict, nodes: list[Node], path: str):
    read = {name for node in nodes for name in node.inputs}
    candidates = [i for i in graph.input if i.name not in constants and i.name in read]
    if len(candidates) != 1:
        names = [i.name for i in candidates]
        raise OnnxImportError(f"{path}: expected exactly one image input read by the graph's "
                              f"nodes, found {len(names)}: {names}")
    return candidates[0]


def _fold_constants(nodes: list[Node], constants: dict[str, np.ndarray], path: str):
    """Evaluates constant-only nodes in NumPy; returns (remaining nodes, folded node names)."""
    from cure_jax.models.convert import onnx_ops

    remaining, folded = [], []
    for node in nodes:
        if all(name == "" or name in constants for name in node.inputs):
            values = onnx_ops.evaluate_constant(node, [constants.get(n) for n in node.inputs])
            constants.update(zip(node.outputs, values, strict=False))
            folded.append(node.name)
        else:
            remaining.append(node)
    return remaining, folded


def read_onnx(path: str | os.PathLike, *, output: str | None = None) -> OnnxGraph:
    """Reads an ONNX file into an `OnnxGraph` (dequantized, constants folded).

    Args:
      path: the `.onnx` file.
      output: the graph output to return (default: the first).

    Returns:
      The `OnnxGraph`.

    Raises:
      FileNotFoundError: `path` does not exist.
      OnnxImportError: no single image input, an unknown output, a node of a non-default
        domain, or a constant node that cannot be folded (naming the node).
    """
    import onnx
    from onnx import numpy_helper

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file {path!r} does not exist")
    model = onnx.load(path)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    nodes = []
    for k, proto in enumerate(graph.node):
        node = Node(proto.name or f"{proto.op_type}_{k}", proto.op_type, tuple(proto.input),
                    tuple(proto.output), _attributes(proto))
        if proto.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{path}: {node.describe()} is in domain {proto.domain!r}; "
                                  "only the default ONNX domain is supported")
        nodes.append(node)
    nodes, folded = _fold_constants(nodes, constants, path)
    outputs = [o.name for o in graph.output]
    output = outputs[0] if output is None else output
    if output not in outputs:
        raise OnnxImportError(f"{path}: no graph output {output!r}; outputs: {outputs}")
    image = _image_input(graph, constants, nodes, path)
    return OnnxGraph(path=path, input_name=image.name, input_shape=_static_shape(image),
                     output_name=output, nodes=tuple(nodes), constants=constants,
                     folded=tuple(folded), opset=opset)
