"""Tiny ONNX graphs written with `onnx.helper`, shaped like the real face recognizers.

`tiny_recognizer` mirrors the insightface-MXNet MobileNet that OpenCV's SFace is: the graph
normalises 0-255 pixels itself (Sub, Mul), its weights are int8 and dequantized in blocks (and
per axis) then reshaped to kernels, it has depthwise convolutions, batch norms with MXNet's
epsilon, PReLU, a residual Add, dropout, flatten, a fully connected layer and an embedding batch
norm, and it still lists an unused float weight as a graph input.
"""

from __future__ import annotations

import numpy as np

SIZE = 16  # input side
EMBEDDING_DIM = 6


def _quantize_blocked(w_2d: np.ndarray, block: int, rng) -> tuple:
    """int8 values, scales [O, ceil(I / block)] and zero points for blocks along axis 1."""
    q = rng.integers(-128, 128, w_2d.shape).astype(np.int8)
    blocks = -(-w_2d.shape[1] // block)
    scale = rng.uniform(0.002, 0.02, (w_2d.shape[0], blocks)).astype(np.float32)
    zero = rng.integers(-20, 20, (w_2d.shape[0], blocks)).astype(np.int8)
    return q, scale, zero


def tiny_recognizer(*, seed: int = 0, extra_node=None, size: int = SIZE):
    """A `onnx.ModelProto` mapping [N, 3, size, size] 0-255 RGB to [N, 6] embeddings.

    Args:
      seed: seeds every weight.
      size: the input side (even; 16 by default, 32 for a run's smallest `data.image_size`).
      extra_node: an optional `NodeProto` appended before the output (for error tests); it reads
        "emb_bn" and must write "extra".
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def add(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def batch_norm(name, x, channels, eps):
        add(f"{name}_gamma", rng.uniform(0.5, 1.5, channels).astype(np.float32))
        add(f"{name}_beta", rng.normal(0, 0.1, channels).astype(np.float32))
        add(f"{name}_mean", rng.normal(0, 0.1, channels).astype(np.float32))
        add(f"{name}_var", rng.uniform(0.5, 2.0, channels).astype(np.float32))
        nodes.append(helper.make_node(
            "BatchNormalization", [x, f"{name}_gamma", f"{name}_beta", f"{name}_mean",
                                   f"{name}_var"], [name], name=name, epsilon=eps, momentum=0.9))
        return name

    add("scalar_sub", np.array([127.5], np.float32))
    add("scalar_mul", np.array([0.0078125], np.float32))
    nodes.append(helper.make_node("Sub", ["data", "scalar_sub"], ["minus"], name="minus"))
    nodes.append(helper.make_node("Mul", ["minus", "scalar_mul"], ["scaled"], name="scaled"))

    # conv_1: 3 -> 8, its weight int8 in blocks of 9 along axis 1, reshaped to OIHW.
    q, scale, zero = _quantize_blocked(np.zeros((8, 27)), 9, rng)
    add("w1_q", q), add("w1_s", scale), add("w1_z", zero)
    add("w1_shape", np.array([8, 3, 3, 3], np.int64))
    nodes.append(helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1_dq"],
                                  name="w1_dequant", axis=1, block_size=9))
    nodes.append(helper.make_node("Reshape", ["w1_dq", "w1_shape"], ["w1"], name="w1_reshape"))
    nodes.append(helper.make_node("Conv", ["scaled", "w1"], ["c1"], name="conv_1",
                                  kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
    batch_norm("bn_1", "c1", 8, 1e-3)
    add("prelu_1", rng.uniform(0.1, 0.4, (8, 1, 1)).astype(np.float32))
    nodes.append(helper.make_node("PRelu", ["bn_1", "prelu_1"], ["p1"], name="relu_1"))

    # conv_2_dw: depthwise, stride 2, with bias.
    add("w2", rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32))
    add("b2", rng.normal(0, 0.1, 8).astype(np.float32))
    nodes.append(helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv_2_dw",
                                  kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], group=8))
    batch_norm("bn_2", "c2", 8, 1e-3)
    nodes.append(helper.make_node("Relu", ["bn_2"], ["r2"], name="relu_2"))

    # A 1x1 convolution added to its input (residual).
    add("w3", rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32))
    nodes.append(helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv_3",
                                  kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Add", ["c3", "r2"], ["sum3"], name="plus_3"))
    nodes.append(helper.make_node("Constant", [], ["ratio"], name="ratio",
                                  value=numpy_helper.from_array(np.array(0.3, np.float32))))
    nodes.append(helper.make_node("Dropout", ["sum3", "ratio"], ["drop"], name="dropout"))
    nodes.append(helper.make_node("Flatten", ["drop"], ["flat"], name="flatten"))

    # pre_fc1: 8 x (size / 2)^2 -> 6, weight int8 per axis 0 (one scale per output row).
    flat = 8 * (size // 2) ** 2
    add("fc_q", rng.integers(-128, 128, (EMBEDDING_DIM, flat)).astype(np.int8))
    add("fc_s", rng.uniform(0.0005, 0.002, EMBEDDING_DIM).astype(np.float32))
    nodes.append(helper.make_node("DequantizeLinear", ["fc_q", "fc_s"], ["fc_w"],
                                  name="fc_dequant", axis=0))
    add("fc_b", rng.normal(0, 0.1, EMBEDDING_DIM).astype(np.float32))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], name="pre_fc1",
                                  transB=1))
    output = batch_norm("emb_bn", "fc", EMBEDDING_DIM, 2e-5)
    if extra_node is not None:
        nodes.append(extra_node)
        output = "extra"

    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, size, size]),
              # Listed but read by no node, as in OpenCV Zoo's int8 files.
              helper.make_tensor_value_info("w1_float", TensorProto.FLOAT, [8, 3, 3, 3])]
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", None])]
    graph = helper.make_graph(nodes, "tiny_recognizer", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def onnxruntime_session(model_proto):
    """An onnxruntime session on `model_proto` without the inputs that no node reads."""
    import onnx
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(model_proto)
    read = {name for node in proto.graph.node for name in node.input}
    constants = {init.name for init in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name in read and i.name not in constants]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    for value_info in (*proto.graph.input, *proto.graph.output):
        dims = value_info.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "N"  # any batch size, as the imported module takes
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about the unused initializers
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
