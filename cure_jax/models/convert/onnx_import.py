"""An ONNX face recognizer as an `nnx.Module` under the backbone contract.

    model = import_onnx("face_recognition_sface_2021dec_int8bq.onnx")
    emb_BxD = model(images_BxSxSx3)  # NHWC RGB in [-1, 1], as data_pipelines normalises them

The module holds the graph's trainable tensors and runs its nodes in order at trace time:

- weights read by `Conv`, `Gemm`, `MatMul`, `PRelu` (and the bias `Add` after a `MatMul`) are
  `nnx.Param`s, dequantized to float32 at import;
- every `BatchNormalization` is an `nnx.BatchNorm` over the channel axis with the node's epsilon and
  momentum (ONNX and Flax share the momentum convention: `running = m * running + (1 - m) *
  batch`), its scale and shift `nnx.Param`s, its running mean and variance `nnx.BatchStat`s;
- every `Dropout` is an `nnx.Dropout` with the graph's ratio;
- everything else (input normalisation constants, reshape targets) stays a constant.

`nnx.view(model, use_running_average=True, deterministic=True)` is the inference graph, as the
ONNX file computes it. Image tensors flow channels-last where the ops allow it (`onnx_nhwc`): the
same values, several times faster on XLA.

Input conventions are adapted inside the module, exactly: the layout (NCHW or NHWC) from the
graph's input shape; the pixel range from `input_range` ("auto": a graph whose first node on the
image is a `Sub`, `Mul`, `Add` or `Div` by a constant normalises itself and takes 0-255 pixels,
as insightface's model zoo decides; otherwise it takes [-1, 1]); the channel order from `bgr`
(insightface and OpenCV's SFace both take RGB).
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cure_jax.models.channel_ops import BatchNorm
from cure_jax.models.convert import onnx_nhwc, onnx_ops
from cure_jax.models.convert.onnx_graph import Node, OnnxGraph, OnnxImportError, read_onnx

INPUT_RANGES = ("auto", "0-255", "-1..1")
# Which inputs of an op are trainable weights when they are float constants.
WEIGHT_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1), "PRelu": (1,)}
_SELF_NORMALISING = ("Sub", "Mul", "Add", "Div")


def _safe_key(name: str, taken: set[str]) -> str:
    """A checkpoint-friendly key for an ONNX name: word characters only, unique."""
    key = re.sub(r"\W", "_", name)
    key = key if key and not key[0].isdigit() else f"t_{key}"
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def _is_float_constant(graph: OnnxGraph, name: str) -> bool:
    value = graph.constants.get(name)
    return value is not None and np.issubdtype(value.dtype, np.floating)


def weight_names(graph: OnnxGraph) -> list[str]:
    """The float constants that the graph's nodes use as trainable weights, in node order."""
    producer = {out: node for node in graph.nodes for out in node.outputs}
    names = []
    for node in graph.nodes:
        positions = WEIGHT_INPUTS.get(node.op_type, ())
        if node.op_type == "Add":  # the bias of a Linear exported as MatMul + Add
            after_matmul = [producer.get(i) is not None and producer[i].op_type == "MatMul"
                            for i in node.inputs]
            positions = (1,) if after_matmul[0] else (0,) if after_matmul[1] else ()
        for k in positions:
            if k < len(node.inputs) and _is_float_constant(graph, node.inputs[k]):
                names.append(node.inputs[k])
    return list(dict.fromkeys(names))


def _batch_norm(graph: OnnxGraph, node: Node) -> BatchNorm:
    names = node.inputs[1:5]
    if len(names) != 4 or not all(_is_float_constant(graph, n) for n in names):
        raise OnnxImportError(f"{graph.path}: {node.describe()}: scale, bias, mean and variance "
                              "must be float constants")
    if len(node.outputs) > 1 and any(node.outputs[1:]):
        raise OnnxImportError(f"{graph.path}: {node.describe()}: training-mode outputs (running "
                              "mean and variance) are not supported")
    scale, bias, mean, var = (np.asarray(graph.constants[n], np.float32) for n in names)
    if not scale.shape == bias.shape == mean.shape == var.shape == (scale.size,):
        raise OnnxImportError(f"{graph.path}: {node.describe()}: scale, bias, mean and variance "
                              f"must be vectors of one length, got {scale.shape}, {bias.shape}, "
                              f"{mean.shape}, {var.shape}")
    # Two-pass variance, as PyTorch and onnxruntime compute batch statistics.
    # Channels last: the module hands batch norms NHWC images and [B, C] vectors.
    bn = BatchNorm(scale.size, axis=-1, momentum=float(node.attr("momentum", 0.9)),
                   epsilon=float(node.attr("epsilon", 1e-5)), use_fast_variance=False,
                   rngs=nnx.Rngs(0))
    for variable, array in ((bn.scale, scale), (bn.bias, bias), (bn.mean, mean), (bn.var, var)):
        variable[...] = jnp.asarray(array)
    return bn


def _dropout_rate(graph: OnnxGraph, node: Node, override: float | None) -> float:
    if override is not None:
        return override
    if len(node.inputs) > 1 and node.inputs[1]:
        ratio = graph.constants.get(node.inputs[1])
        if ratio is None:
            raise OnnxImportError(f"{graph.path}: {node.describe()}: the ratio must be constant")
        return float(np.asarray(ratio))
    return 0.5  # ONNX's default ratio


def _input_range(graph: OnnxGraph, requested: str) -> str:
    if requested not in INPUT_RANGES:
        raise ValueError(f"input_range={requested!r}; valid: {INPUT_RANGES}")
    if requested != "auto":
        return requested
    first = next(n for n in graph.nodes if graph.input_name in n.inputs)
    other = [i for i in first.inputs if i != graph.input_name]
    self_normalising = (first.op_type in _SELF_NORMALISING and len(other) == 1
                        and other[0] in graph.constants)
    return "0-255" if self_normalising else "-1..1"


def _layout(graph: OnnxGraph) -> str:
    shape = graph.input_shape
    if len(shape) == 4 and shape[1] == 3 and shape[2] == shape[3] and shape[2]:
        return "NCHW"
    if len(shape) == 4 and shape[3] == 3 and shape[1] == shape[2] and shape[1]:
        return "NHWC"
    raise OnnxImportError(f"{graph.path}: input {graph.input_name!r} has shape {shape}; expected "
                          "square images [N, 3, S, S] or [N, S, S, 3] with a static size S")


class OnnxBackbone(nnx.Module):
    """An ONNX graph as a backbone: images [B, S, S, 3] in [-1, 1] to raw embeddings [B, D]."""

    def __init__(self, graph: OnnxGraph, *, input_range: str = "auto", bgr: bool = False,
                 dropout_rate: float | None = None):
        for node in graph.nodes:
            onnx_ops.check_node(node)
        self.graph = graph
        self.layout = _layout(graph)
        self.input_range = _input_range(graph, input_range)
        self.bgr = bgr
        self.input_size = graph.input_shape[2] if self.layout == "NCHW" else graph.input_shape[1]
        taken: set[str] = set()
        names = weight_names(graph)
        self.weight_keys = tuple((name, _safe_key(name, taken)) for name in names)
        self.weights = nnx.Dict({key: nnx.Param(jnp.asarray(graph.constants[name], jnp.float32))
                                 for name, key in self.weight_keys})
        stateful = {"BatchNormalization": [], "Dropout": []}
        for node in graph.nodes:
            if node.op_type in stateful:
                stateful[node.op_type].append((node.name, _safe_key(node.name, taken)))
        self.node_keys = tuple(stateful["BatchNormalization"] + stateful["Dropout"])
        by_name = {node.name: node for node in graph.nodes}
        self.norms = nnx.Dict({key: _batch_norm(graph, by_name[name])
                               for name, key in stateful["BatchNormalization"]})
        self.dropouts = nnx.Dict({key: nnx.Dropout(_dropout_rate(graph, by_name[name],
                                                                  dropout_rate))
                                  for name, key in stateful["Dropout"]})

        self.use_running_average, self.deterministic = False, False

    def set_view(self, use_running_average: bool | None = None,
                 deterministic: bool | None = None):
        """Takes `nnx.view`'s evaluation keys even when the graph has no BatchNormalization or
        Dropout node to take them (the nodes' own modules get them as well)."""
        if use_running_average is not None:
            self.use_running_average = use_running_average
        if deterministic is not None:
            self.deterministic = deterministic

    def _adapt_input(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected images [B, {self.input_size}, {self.input_size}, 3], got "
                             f"{images.shape}")
        x = images
        if self.input_range == "0-255":
            x = x * 127.5 + 127.5  # the exact inverse of (x / 255 - 0.5) / 0.5
        if self.bgr:
            x = x[..., ::-1]
        # An NCHW graph gets the NHWC images as they are, marked channels-last.
        return onnx_nhwc.ChannelsLast(x) if self.layout == "NCHW" else x

    def _stateful(self, node: Node, x, key: str, dropout_key: jax.Array | None,
                  on_batch_norm=None):
        """A BatchNormalization or Dropout node on `x`, channels last."""
        channels_last = isinstance(x, onnx_nhwc.ChannelsLast)
        data = x.nhwc if channels_last else jnp.moveaxis(x, 1, -1)  # no-op for [B, C]
        if node.op_type == "BatchNormalization":
            if on_batch_norm is not None:
                on_batch_norm(self.norms[key], data)
            out = self.norms[key](data)
        else:
            out = self.dropouts[key](data, rngs=dropout_key)
        return onnx_nhwc.ChannelsLast(out) if channels_last else jnp.moveaxis(out, -1, 1)

    def __call__(self, images: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """Embeds a batch.

        Args:
          images: [B, S, S, 3] float, RGB in [-1, 1].
          dropout_key: PRNG key for the graph's dropout in training (unused in evaluation).

        Returns:
          Raw (unnormalised) embeddings [B, D], the graph's output.
        """
        env = self.activations(images, dropout_key=dropout_key)
        return onnx_nhwc.canonical(env[self.graph.output_name])

    def activations(self, images: jax.Array, *, stop: int | None = None,
                    dropout_key: jax.Array | None = None, on_batch_norm=None) -> dict:
        """The values the graph's nodes before index `stop` (all: None) compute from `images`.

        Returns:
          {ONNX value name: value}; a 4-D image value may be an `onnx_nhwc.ChannelsLast`
          (`onnx_nhwc.canonical` gives its ONNX layout). See `run_nodes` for the arguments.
        """
        return self.run_nodes({self.graph.input_name: self._adapt_input(images)}, stop=stop,
                              dropout_key=dropout_key, on_batch_norm=on_batch_norm)

    def run_nodes(self, env: dict, *, start: int = 0, stop: int | None = None,
                  dropout_key: jax.Array | None = None, on_batch_norm=None) -> dict:
        """`env` extended by the values of the graph's nodes `start` to `stop` (excluded), run in
        order: a forward pass in parts (quality scores replace a value between two parts).

        Args:
          env: {ONNX value name: value}, every value these nodes read that is not a weight or
            a constant (e.g. from `activations`); not modified.
          start, stop: node indices (`graph.nodes`); `stop` None runs to the end.
          dropout_key: PRNG key for the graph's dropout in training (unused in evaluation).
          on_batch_norm: None, or `on_batch_norm(module, x)` called with the `nnx.BatchNorm` of
            every BatchNormalization node run and its input, channels last ([B, H, W, C] or
            [B, C]), before the node runs.
        """
        graph = self.graph
        weights = {name: self.weights[key] for name, key in self.weight_keys}
        node_keys = dict(self.node_keys)
        env = dict(env)

        def value(name):
            if name == "":
                return None
            if name in env:
                return env[name]
            return weights[name][...] if name in weights else graph.constants[name]

        stop = len(graph.nodes) if stop is None else stop
        for k in range(start, stop):
            node = graph.nodes[k]
            inputs = [value(name) for name in node.inputs]
            if node.op_type in ("BatchNormalization", "Dropout"):
                key = None if dropout_key is None else jax.random.fold_in(dropout_key, k)
                outputs = (self._stateful(node, inputs[0], node_keys[node.name], key,
                                          on_batch_norm),)
            elif onnx_nhwc.takes_channels_last(node, inputs):
                outputs = onnx_nhwc.run_channels_last(node, inputs)
            else:
                outputs = onnx_ops.run_node(node, [onnx_nhwc.canonical(v) for v in inputs])
            env.update(zip(node.outputs, outputs, strict=False))
        return env


def import_onnx(path: str | os.PathLike, *, input_range: str = "auto", bgr: bool = False,
                dropout_rate: float | None = None, output: str | None = None) -> OnnxBackbone:
    """Imports an ONNX face recognizer as an `OnnxBackbone`.

    Args:
      path: the `.onnx` file.
      input_range: the pixel range the graph expects: "0-255", "-1..1", or "auto" (see the
        module docstring).
      bgr: the graph expects BGR channel order.
      dropout_rate: replaces the rate of every `Dropout` node (None keeps the graph's ratio).
      output: the graph output to use (default: the first).

    Returns:
      The module, in training mode; its evaluation view reproduces the file's inference.

    Raises:
      FileNotFoundError: `path` does not exist.
      OnnxImportError: an unsupported op, attribute or shape (naming the node and listing the
        supported ops), or a graph without a single square image input.
    """
    model = OnnxBackbone(read_onnx(path, output=output), input_range=input_range, bgr=bgr,
                         dropout_rate=dropout_rate)
    # Trace the inference graph once on abstract inputs: shape errors surface now, not mid-run.
    eval_view = nnx.view(model, use_running_average=True, deterministic=True)
    size = model.input_size
    out = jax.eval_shape(lambda x: eval_view(x), jax.ShapeDtypeStruct((2, size, size, 3),
                                                                     jnp.float32))
    if out.ndim != 2 or out.shape[0] != 2:
        raise OnnxImportError(f"{path}: output {model.graph.output_name!r} has shape "
                              f"{out.shape} for a batch of 2 images; expected [2, D]")
    model.embedding_dim = int(out.shape[1])
    return model
