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

from cure_jax.models.convert import onnx_ops

# Re-exported: where the importer's users find them.
from cure_jax.models.convert.onnx_nodes import Node, OnnxImportError, dequantize_linear  # noqa: F401


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
