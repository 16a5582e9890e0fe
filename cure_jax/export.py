"""A trained (or unlearned) backbone back into the format its users deploy.

- `export_onnx_backbone`: an imported ONNX model back to its original graph, with the trained
  float weights and batch-norm statistics written in (int8 weights come back dequantized: the
  `DequantizeLinear` / `Reshape` chains that produced them are replaced by float initializers).
- `export_iresnet_onnx`: our `IResNet` as an arcface_torch-style ONNX graph (NCHW RGB input in
  [-1, 1], as insightface's exports take), written with `onnx.helper`.
- `save_arcface_pth`: our `IResNet` as an arcface_torch `backbone.pth` state dict (needs torch).
- `file_sha256`: a file's digest, for reports.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from cure_jax.models.convert.onnx_import import OnnxBackbone
from cure_jax.models.convert.torch_state import iresnet_state_dict, stage_counts
from cure_jax.models.iresnet import IResNet

IRESNET_OPSET = 17


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _trained_values(model: OnnxBackbone) -> dict[str, np.ndarray]:
    """{ONNX tensor name: trained float32 value} of every weight and batch-norm tensor."""
    values = {name: np.asarray(model.weights[key][...]) for name, key in model.weight_keys}
    node_keys = dict(model.node_keys)
    for node in model.graph.nodes:
        if node.op_type == "BatchNormalization":
            bn = model.norms[node_keys[node.name]]
            for name, variable in zip(node.inputs[1:5], (bn.scale, bn.bias, bn.mean, bn.var),
                                      strict=True):
                values[name] = np.asarray(variable[...])
    return {name: value.astype(np.float32) for name, value in values.items()}


def export_onnx_backbone(model: OnnxBackbone, path: str | os.PathLike, *,
                         source: str | os.PathLike | None = None) -> str:
    """Writes the imported ONNX graph with `model`'s weights and statistics to `path`.

    Nodes folded at import (dequantization, weight reshapes, constants) are replaced by the
    float initializers they produced, trained where the model trains them; inputs that no node
    reads are dropped. Every other node, attribute and name stays as in the original.

    Args:
      model: an `OnnxBackbone` (trained or not).
      path: the `.onnx` file to write.
      source: the original file (default: the one the model was imported from).

    Returns:
      The sha256 of the written file.
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    proto = onnx.load(os.fspath(source or graph.path))
    values = {**graph.constants, **_trained_values(model)}
    # A node was folded at import exactly when all its outputs became constants.
    kept = [node for node in proto.graph.node
            if not all(out in graph.constants for out in node.output if out)]
    read = {name for node in kept for name in node.input if name}
    inputs = [i for i in proto.graph.input if i.name == graph.input_name]
    initializers = [numpy_helper.from_array(np.asarray(values[name]), name)
                    for name in sorted(read) if name in values]
    del proto.graph.node[:], proto.graph.input[:], proto.graph.initializer[:]
    proto.graph.node.extend(kept)
    proto.graph.input.extend(inputs)
    proto.graph.initializer.extend(initializers)
    onnx.checker.check_model(proto)
    onnx.save(proto, os.fspath(path))
    return file_sha256(path)


class _GraphWriter:
    """Collects nodes and initializers of an arcface_torch IResNet graph."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state, self.nodes, self.initializers = state, [], []

    def tensor(self, key: str, value: np.ndarray | None = None) -> str:
        from onnx import numpy_helper

        value = self.state[key] if value is None else value
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), key))
        return key

    def conv(self, x: str, key: str, stride: int) -> str:
        from onnx import helper

        weight = self.state[f"{key}.weight"]
        pad = weight.shape[-1] // 2  # 1 for 3x3, 0 for 1x1, as arcface_torch pads
        self.nodes.append(helper.make_node(
            "Conv", [x, self.tensor(f"{key}.weight")], [key], name=key,
            kernel_shape=list(weight.shape[2:]), strides=[stride, stride], pads=[pad] * 4))
        return key

    def bn(self, x: str, key: str) -> str:
        from onnx import helper

        names = [self.tensor(f"{key}.{p}") for p in ("weight", "bias", "running_mean",
                                                      "running_var")]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *names], [f"{key}.out"],
                                           name=key, epsilon=1e-5, momentum=0.9))
        return f"{key}.out"

    def prelu(self, x: str, key: str) -> str:
        from onnx import helper

        slope = self.tensor(f"{key}.weight", self.state[f"{key}.weight"].reshape(-1, 1, 1))
        self.nodes.append(helper.make_node("PRelu", [x, slope], [f"{key}.out"], name=key))
        return f"{key}.out"


def _write_blocks(writer: _GraphWriter, x: str, model: IResNet) -> str:
    from onnx import helper

    for stage, count in enumerate(stage_counts(model), start=1):
        for i in range(count):
            key = f"layer{stage}.{i}"
            stride = 2 if i == 0 else 1
            out = writer.conv(writer.bn(x, f"{key}.bn1"), f"{key}.conv1", 1)
            out = writer.prelu(writer.bn(out, f"{key}.bn2"), f"{key}.prelu")
            out = writer.bn(writer.conv(out, f"{key}.conv2", stride), f"{key}.bn3")
            shortcut = x
            if f"{key}.downsample.0.weight" in writer.state:
                shortcut = writer.bn(writer.conv(x, f"{key}.downsample.0", stride),
                                     f"{key}.downsample.1")
            writer.nodes.append(helper.make_node("Add", [out, shortcut], [f"{key}.sum"],
                                                 name=f"{key}.add"))
            x = f"{key}.sum"
    return x


def export_iresnet_onnx(model: IResNet, path: str | os.PathLike, *,
                        input_name: str = "data", output_name: str = "embedding") -> str:
    """Writes `model` as an arcface_torch-style ONNX graph (inference: running BN statistics,
    no dropout).

    The graph takes NCHW RGB images [N, 3, S, S] in [-1, 1] (insightface's convention for
    arcface_torch exports) and returns raw embeddings [N, D].

    Returns:
      The sha256 of the written file.
    """
    import onnx
    from onnx import TensorProto, helper

    state = iresnet_state_dict(model)
    writer = _GraphWriter(state)
    x = writer.prelu(writer.bn(writer.conv(input_name, "conv1", 1), "bn1"), "prelu")
    x = writer.bn(_write_blocks(writer, x, model), "bn2")
    writer.nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    writer.nodes.append(helper.make_node(
        "Gemm", ["flat", writer.tensor("fc.weight"), writer.tensor("fc.bias")], ["fc.out"],
        name="fc", transB=1))
    x = writer.bn("fc.out", "features")
    writer.nodes.append(helper.make_node("Identity", [x], [output_name], name="output"))
    size = model.input_size
    graph = helper.make_graph(
        writer.nodes, "iresnet", [helper.make_tensor_value_info(
            input_name, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                       ["N", model.embedding_dim])], writer.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", IRESNET_OPSET)],
                              producer_name="cure_jax")
    onnx.checker.check_model(proto)
    onnx.save(proto, os.fspath(path))
    return file_sha256(path)


def save_arcface_pth(model: IResNet, path: str | os.PathLike) -> str:
    """Writes `model` as an arcface_torch `backbone.pth` (a state dict; needs torch).

    Returns:
      The sha256 of the written file.

    Raises:
      ImportError: torch is not installed (`pip install -e ".[torch]"`).
    """
    try:
        import torch
    except ImportError as err:
        raise ImportError("writing a .pth needs torch: pip install -e '.[torch]'") from err
    import collections

    state = collections.OrderedDict((key, torch.from_numpy(np.array(value)))
                                    for key, value in iresnet_state_dict(model).items())
    torch.save(state, os.fspath(path))
    return file_sha256(path)
