"""ONNX operators as functions of arrays, for the importer.

Each operator is `fn(node, *inputs) -> output or tuple of outputs`. Inputs that are NumPy arrays
are constants (shapes, axes, folded weights); an operator whose inputs are all NumPy computes in
NumPy, so shape arithmetic (`Shape`, `Gather`, `Concat` feeding a `Reshape`) stays static under
`jax.jit`. Anything traced goes through `jax.numpy` / `jax.lax`.

`BatchNormalization` and `Dropout` are listed here for validation but run as `nnx.BatchNorm` and
`nnx.Dropout` in the module (they have training behaviour and state).

Layouts are ONNX's own (NCHW for images, OIHW for kernels): the module adapts its NHWC input
once, at the graph's entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.models.convert.onnx_nodes import Node, OnnxImportError, dequantize_linear


class Op(NamedTuple):
    fn: Callable[..., Any]
    attrs: frozenset[str]  # the attributes the implementation understands


def _xp(*arrays):
    """NumPy when every array is a constant, else jax.numpy."""
    return np if all(a is None or isinstance(a, np.ndarray | np.generic) for a in arrays) else jnp


def _unsupported(node: Node, what: str) -> OnnxImportError:
    return OnnxImportError(f"{node.describe()}: {what}")


def _binary(fn):
    return lambda node, a, b: fn(a, b)


def _prelu(node, x, slope):
    # ONNX broadcasts the slope unidirectionally to x (PyTorch exports it as [C, 1, 1]).
    return _xp(x, slope).where(x >= 0, x, slope * x)


def _flatten(node, x):
    axis = node.attr("axis", 1) % max(x.ndim, 1)
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _reshape(node, x, shape):
    if not isinstance(shape, np.ndarray):
        raise _unsupported(node, "the target shape must be a constant (known at import)")
    shape = [int(s) for s in shape]
    if not node.attr("allowzero", 0):
        # 0 copies the input's dimension at that position (unless allowzero).
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _gemm(node, a, b, c=None):
    if node.attr("transA", 0):
        a = a.T
    if node.attr("transB", 0):
        b = b.T
    out = node.attr("alpha", 1.0) * (a @ b)
    if c is not None:
        out = out + node.attr("beta", 1.0) * c
    return out


def conv_padding(node: Node, rank: int) -> list[tuple[int, int]]:
    """(low, high) padding per spatial axis of a `Conv` on a tensor of `rank` dimensions."""
    spatial = rank - 2
    pads = node.attr("pads", (0,) * 2 * spatial)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return [(pads[i], pads[i + spatial]) for i in range(spatial)]
    if auto_pad == "VALID":
        return [(0, 0)] * spatial
    raise _unsupported(node, f"auto_pad={auto_pad!r} is not supported (NOTSET or VALID)")


def _conv(node, x, w, b=None):
    if x.ndim != 4 or w.ndim != 4:
        raise _unsupported(node, f"only 2-D convolutions are supported, got input {x.shape} and "
                                 f"kernel {tuple(w.shape)}")
    strides = tuple(node.attr("strides", (1, 1)))
    dilations = tuple(node.attr("dilations", (1, 1)))
    out = jax.lax.conv_general_dilated(
        x, w, window_strides=strides, padding=conv_padding(node, x.ndim), rhs_dilation=dilations,
        dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=node.attr("group", 1))
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def _global_average_pool(node, x):
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


def _pad(node, x, pads=None, value=None, axes=None):
    if node.attr("mode", "constant") != "constant":
        raise _unsupported(node, f"mode={node.attr('mode')!r}; only 'constant' is supported")
    if axes is not None:
        raise _unsupported(node, "the axes input is not supported")
    pads = node.attr("pads") if pads is None else pads
    if pads is None or not isinstance(pads, np.ndarray | tuple):
        raise _unsupported(node, "pads must be a constant (known at import)")
    pads = [int(p) for p in pads]
    if min(pads) < 0:
        raise _unsupported(node, f"negative pads {pads} are not supported")
    fill = node.attr("value", 0.0) if value is None else float(np.asarray(value))
    half = len(pads) // 2
    return _xp(x).pad(x, list(zip(pads[:half], pads[half:], strict=True)), constant_values=fill)


def _concat(node, *xs):
    return _xp(*xs).concatenate(xs, axis=node.attr("axis"))


def _shape(node, x):
    # Shapes are static under jax.jit: a NumPy constant keeps the arithmetic after it static.
    return np.asarray(x.shape[node.attr("start", 0):node.attr("end", None)], dtype=np.int64)


def _gather(node, x, indices):
    return _xp(x, indices).take(x, indices, axis=node.attr("axis", 0))


def _axes(node, axes):
    axes = node.attr("axes") if axes is None else axes
    if axes is None or not isinstance(axes, np.ndarray | tuple):
        raise _unsupported(node, "axes must be a constant (known at import)")
    return tuple(int(a) for a in np.asarray(axes).ravel())


def _unsqueeze(node, x, axes=None):
    axes = _axes(node, axes)
    return _xp(x).expand_dims(x, tuple(a % (x.ndim + len(axes)) for a in axes))


def _squeeze(node, x, axes=None):
    if axes is None and node.attr("axes") is None:
        return _xp(x).squeeze(x)
    return _xp(x).squeeze(x, tuple(a % x.ndim for a in _axes(node, axes)))


def _cast(node, x):
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(node.attr("to"))
    return x.astype(dtype)


def _transpose(node, x):
    perm = node.attr("perm")
    return _xp(x).transpose(x, None if perm is None else tuple(perm))


def _constant(node):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if node.attr(key) is not None:
            dtype = np.int64 if "int" in key else np.float32
            return np.asarray(node.attr(key), dtype=None if key == "value" else dtype)
    raise _unsupported(node, "only value, value_float(s) and value_int(s) are supported")


def _dequantize(node, x, scale, zero_point=None):
    if not isinstance(x, np.ndarray):
        raise _unsupported(node, "only constant (weight) inputs can be dequantized")
    return dequantize_linear(x, scale, zero_point, axis=node.attr("axis", 1),
                             block_size=node.attr("block_size", 0))


def _identity(node, x, *rest):
    return x


def _run_in_module(node, *inputs):
    raise _unsupported(node, "runs inside the module, not as a plain function")


def _op(fn, *attrs):
    return Op(fn, frozenset(attrs))


OPS: dict[str, Op] = {
    "Add": _op(_binary(lambda a, b: a + b)),
    "Sub": _op(_binary(lambda a, b: a - b)),
    "Mul": _op(_binary(lambda a, b: a * b)),
    "Div": _op(_binary(lambda a, b: a / b)),
    "MatMul": _op(_binary(lambda a, b: a @ b)),
    "Relu": _op(lambda node, x: _xp(x).maximum(x, 0)),
    "LeakyRelu": _op(lambda node, x: _xp(x).where(x >= 0, x, node.attr("alpha", 0.01) * x),
                     "alpha"),
    "Sigmoid": _op(lambda node, x: jax.nn.sigmoid(x)),
    "PRelu": _op(_prelu),
    "Identity": _op(_identity),
    "Flatten": _op(_flatten, "axis"),
    "Reshape": _op(_reshape, "allowzero"),
    "Transpose": _op(_transpose, "perm"),
    "Gemm": _op(_gemm, "alpha", "beta", "transA", "transB"),
    "Conv": _op(_conv, "auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"),
    "GlobalAveragePool": _op(_global_average_pool),
    "Pad": _op(_pad, "mode", "pads", "value"),
    "Concat": _op(_concat, "axis"),
    "Shape": _op(_shape, "start", "end"),
    "Gather": _op(_gather, "axis"),
    "Unsqueeze": _op(_unsqueeze, "axes"),
    "Squeeze": _op(_squeeze, "axes"),
    "Cast": _op(_cast, "to", "saturate"),
    "Constant": _op(_constant, "value", "value_float", "value_floats", "value_int", "value_ints"),
    "DequantizeLinear": _op(_dequantize, "axis", "block_size", "output_dtype"),
    # Stateful: nnx.BatchNorm and nnx.Dropout in the module.
    "BatchNormalization": _op(_run_in_module, "epsilon", "momentum", "training_mode"),
    "Dropout": _op(_run_in_module, "seed"),
}


def supported_ops() -> str:
    return ", ".join(sorted(OPS))


def check_node(node: Node) -> None:
    """Raises `OnnxImportError` naming the node if its op or one of its attributes is not
    supported (listing the supported ops)."""
    op = OPS.get(node.op_type)
    if op is None:
        raise OnnxImportError(f"{node.describe()} is not supported; supported ops: "
                              f"{supported_ops()}")
    unknown = sorted(key for key, _ in node.attrs if key not in op.attrs)
    if unknown:
        raise OnnxImportError(f"{node.describe()}: attribute(s) {unknown} not supported; "
                              f"supported for {node.op_type}: {sorted(op.attrs) or 'none'}")
    if node.op_type == "DequantizeLinear" and node.attr("output_dtype", 1) != 1:
        raise OnnxImportError(f"{node.describe()}: only float32 output is supported")


def run_node(node: Node, inputs: list) -> tuple:
    """Outputs of `node` on `inputs` (None for a skipped optional input), always a tuple.

    Raises:
      OnnxImportError: the op, an attribute, or the input shapes are not supported, naming the
        node.
    """
    check_node(node)
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]  # trailing optional inputs left out
    try:
        out = OPS[node.op_type].fn(node, *inputs)
    except OnnxImportError:
        raise
    except (TypeError, ValueError, IndexError) as err:
        shapes = [None if x is None else tuple(np.shape(x)) for x in inputs]
        raise OnnxImportError(f"{node.describe()} failed on input shapes {shapes}: "
                              f"{type(err).__name__}: {err}") from err
    return out if isinstance(out, tuple) else (out,)


def evaluate_constant(node: Node, inputs: list) -> tuple:
    """Outputs, as NumPy arrays, of a node whose inputs are all constants (folded at import)."""
    if node.op_type == "Dropout":
        return (inputs[0],)  # inference behaviour: folding happens once, outside training
    return tuple(np.asarray(out) for out in run_node(node, inputs))
