"""ONNX import: dequantization, operators, parity with onnxruntime, errors, training."""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cure_jax import sharding
from cure_jax.models.backbone import split_model
from cure_jax.models.convert.onnx_graph import OnnxImportError, dequantize_linear, read_onnx
from cure_jax.models.convert.onnx_import import import_onnx
from tests import onnx_graphs

onnx = pytest.importorskip("onnx", reason="the onnx package is needed to write test graphs")
REPO = pathlib.Path(__file__).resolve().parents[1]
SFACE = "sface/face_recognition_sface_2021dec_int8bq.onnx"


def shared_path(variable: str, default: pathlib.Path, relative: str) -> pathlib.Path:
    path = pathlib.Path(os.environ.get(variable, default)) / relative
    if not path.exists():
        pytest.skip(f"{path} not found (set {variable} to its folder)")
    return path


def normalise(pixels_u8):
    return (np.asarray(pixels_u8, np.float32) / 255 - 0.5) / 0.5


def save(model_proto, tmp_path, name="tiny.onnx"):
    path = tmp_path / name
    onnx.save(model_proto, path)
    return path


def test_dequantize_layouts_match_the_formula():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (3, 10)).astype(np.int8)
    # Per tensor.
    np.testing.assert_array_equal(dequantize_linear(x, np.float32(0.5), np.int8(3)),
                                  (x.astype(np.float32) - 3) * 0.5)
    # Per axis 0.
    scale, zero = np.array([1, 2, 3], np.float32), np.array([0, -1, 5], np.int8)
    np.testing.assert_array_equal(dequantize_linear(x, scale, zero, axis=0),
                                  (x - zero[:, None].astype(np.float32)) * scale[:, None])
    # Blocks of 4 along axis 1: three blocks, the last one two entries long.
    scale = rng.uniform(0.1, 1, (3, 3)).astype(np.float32)
    zero = rng.integers(-5, 5, (3, 3)).astype(np.int8)
    out = dequantize_linear(x, scale, zero, axis=1, block_size=4)
    for j in range(10):
        expected = (x[:, j].astype(np.float32) - zero[:, j // 4]) * scale[:, j // 4]
        np.testing.assert_array_equal(out[:, j], expected)
    assert out.dtype == np.float32
    with pytest.raises(OnnxImportError, match="blocked scale shape"):
        dequantize_linear(x, scale[:, :2], zero[:, :2], axis=1, block_size=4)


def test_dequantize_matches_the_onnx_reference():
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (4, 27)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, (4, 3)).astype(np.float32)
    zero = rng.integers(-9, 9, (4, 3)).astype(np.int8)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1, block_size=9)
    graph = helper.make_graph([node], "dq", [], [helper.make_tensor_value_info("y", 1, None)],
                              [numpy_helper.from_array(v, n)
                               for n, v in (("x", x), ("s", scale), ("z", zero))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    expected = ReferenceEvaluator(model).run(None, {})[0]
    np.testing.assert_array_equal(dequantize_linear(x, scale, zero, axis=1, block_size=9),
                                  expected)


def test_reading_folds_constants_and_drops_unused_inputs(tmp_path):
    graph = read_onnx(save(onnx_graphs.tiny_recognizer(), tmp_path))
    assert graph.input_name == "data" and graph.input_shape == (None, 3, 16, 16)
    assert {"w1_dequant", "w1_reshape", "fc_dequant", "ratio"} <= set(graph.folded)
    assert graph.constants["w1"].shape == (8, 3, 3, 3)
    assert graph.constants["w1"].dtype == np.float32
    assert all(n.op_type not in ("DequantizeLinear", "Constant") for n in graph.nodes)


def test_tiny_graph_matches_onnxruntime_in_eval_mode(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the test extra) is the reference")
    proto = onnx_graphs.tiny_recognizer()
    model = import_onnx(save(proto, tmp_path))
    assert (model.layout, model.input_range, model.embedding_dim) == ("NCHW", "0-255", 6)
    pixels = np.random.default_rng(2).integers(0, 256, (5, 16, 16, 3)).astype(np.float32)
    expected = onnx_graphs.onnxruntime_session(proto).run(
        None, {"data": pixels.transpose(0, 3, 1, 2)})[0]
    eval_view = nnx.view(model, use_running_average=True, deterministic=True)
    out = jax.jit(lambda x: eval_view(x))(normalise(pixels))
    assert out.shape == (5, 6)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_trainable_state_is_params_and_batch_stats(tmp_path):
    model = import_onnx(save(onnx_graphs.tiny_recognizer(), tmp_path))
    graphs, params, batch_stats = split_model(model)
    names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(params)}
    # Conv and Gemm weights (dequantized), the conv bias, PReLU slopes, BN scales and shifts.
    assert {"weights/w1", "weights/w2", "weights/b2", "weights/w3", "weights/fc_w",
            "weights/fc_b", "weights/prelu_1", "norms/bn_1/scale", "norms/emb_bn/bias"} == (
        names & {"weights/w1", "weights/w2", "weights/b2", "weights/w3", "weights/fc_w",
                 "weights/fc_b", "weights/prelu_1", "norms/bn_1/scale", "norms/emb_bn/bias"})
    assert not any("scalar" in n for n in names)  # the input normalisation stays a constant
    stats = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(batch_stats)}
    assert stats == {f"norms/{bn}/{s}" for bn in ("bn_1", "bn_2", "emb_bn")
                     for s in ("mean", "var")}
    everything = nnx.state(model)
    assert len(nnx.to_flat_state(everything)) == len(names) + len(stats)
    assert model.norms["bn_1"].epsilon == pytest.approx(1e-3)
    assert model.norms["bn_1"].momentum == pytest.approx(0.9)
    assert model.dropouts["dropout"].rate == pytest.approx(0.3)


def test_training_steps_run_sharded_change_state_and_compile_once(tmp_path):
    model = import_onnx(save(onnx_graphs.tiny_recognizer(), tmp_path))
    graphs, params, batch_stats = split_model(model)
    mesh = sharding.make_mesh()
    tx = optax.sgd(0.05)
    traces = []

    def loss_fn(params, batch_stats, images, key):
        module = nnx.merge(graphs.train, params, batch_stats, copy=True)
        emb = module(images, dropout_key=key)
        loss = jnp.mean(jnp.sum(jnp.square(emb - 1.0), axis=-1))
        return loss, nnx.state(module, nnx.BatchStat)

    @jax.jit
    def step(params, batch_stats, opt_state, images, key):
        traces.append(1)
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, images, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    state = sharding.replicate((params, batch_stats, tx.init(params)), mesh)
    rng = np.random.default_rng(3)
    losses = []
    for k in range(3):
        images = sharding.shard_batch(normalise(rng.integers(0, 256, (4, 16, 16, 3))), mesh)
        *state, loss = step(*state, images, jax.random.key(k))
        losses.append(float(loss))
    new_params, new_stats, _ = state
    assert len(traces) == 1
    assert np.all(np.isfinite(losses))
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           params, new_params)
    # Every parameter moves, except the bias of a convolution that a batch norm in training mode
    # follows: the batch mean removes it, so its gradient is exactly zero.
    flat = {"/".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(changed)}
    assert flat.pop("weights/b2") is False
    assert all(flat.values()), [k for k, v in flat.items() if not v]
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         batch_stats, new_stats)
    assert all(jax.tree.leaves(moved))  # every BN's running statistics are updated


def test_unsupported_op_names_the_node_and_lists_supported_ops(tmp_path):
    from onnx import helper

    node = helper.make_node("Softsign", ["emb_bn"], ["extra"], name="odd_one")
    with pytest.raises(OnnxImportError, match=r"node 'odd_one' \(op Softsign\) is not "
                                              r"supported; supported ops: Add, .*Conv"):
        import_onnx(save(onnx_graphs.tiny_recognizer(extra_node=node), tmp_path))


def test_unsupported_attribute_and_shape_name_the_node(tmp_path):
    from onnx import helper

    node = helper.make_node("Flatten", ["emb_bn"], ["extra"], name="flat_2", axis=1, odd=3)
    with pytest.raises(OnnxImportError, match=r"node 'flat_2' \(op Flatten\).*\['odd'\]"):
        import_onnx(save(onnx_graphs.tiny_recognizer(extra_node=node), tmp_path))
    node = helper.make_node("Conv", ["emb_bn", "w3"], ["extra"], name="conv_on_vectors")
    with pytest.raises(OnnxImportError, match=r"node 'conv_on_vectors' \(op Conv\).*2-D"):
        import_onnx(save(onnx_graphs.tiny_recognizer(extra_node=node), tmp_path))


def lfw_faces(count: int) -> np.ndarray:
    """`count` LFW crops resized to 112x112 uint8 RGB [count, 112, 112, 3]."""
    from data_pipelines.sources.image_folder import decode_image

    images = shared_path("CURE_JAX_LFW", REPO.parent / "shared" / "data" / "lfw", "images")
    people = sorted(p for p in images.iterdir() if p.is_dir())[:count]
    return np.stack([decode_image(str(sorted(p.iterdir())[0]), image_size=112) for p in people])


@pytest.mark.slow
def test_sface_matches_onnxruntime_on_lfw_faces():
    pytest.importorskip("onnxruntime", reason="onnxruntime (the test extra) is the reference")
    path = shared_path("CURE_JAX_MODELS", REPO.parent / "shared" / "models", SFACE)
    faces = lfw_faces(8)
    model = import_onnx(path)
    assert (model.input_size, model.embedding_dim, model.input_range) == (112, 128, "0-255")
    eval_view = nnx.view(model, use_running_average=True, deterministic=True)
    out = np.asarray(jax.jit(lambda x: eval_view(x))(normalise(faces)))
    session = onnx_graphs.onnxruntime_session(onnx.load(path))
    expected = session.run(None, {"data": faces.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    assert np.max(np.abs(out - expected)) <= 1e-4
    # Different people: the embeddings are far from equal (the check is not vacuous).
    assert np.max(np.abs(expected[0] - expected[1])) > 0.1


FOUR_DEVICES = """
import pathlib, sys, tempfile
import jax, jax.numpy as jnp, numpy as np, onnx
from flax import nnx
from cure_jax import sharding
from cure_jax.models.backbone import split_model
from cure_jax.models.convert.onnx_import import import_onnx
from tests import onnx_graphs

assert len(jax.devices()) == 4
path = pathlib.Path(tempfile.mkdtemp()) / "tiny.onnx"
onnx.save(onnx_graphs.tiny_recognizer(), path)
graphs, params, batch_stats = split_model(import_onnx(path))

def loss_fn(params, batch_stats, images):
    module = nnx.merge(graphs.train, params, batch_stats, copy=True)
    loss = jnp.mean(jnp.square(module(images, dropout_key=jax.random.key(0)) - 1.0))
    return loss, nnx.state(module, nnx.BatchStat)

step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
images = (np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)) / 127.5 - 1).astype("f4")
results = []
for devices in (4, 1):
    mesh = sharding.make_mesh(devices)
    p, s = sharding.replicate((params, batch_stats), mesh)
    (loss, stats), grads = step(p, s, sharding.shard_batch(images, mesh))
    results.append((float(loss), jax.tree.leaves(stats), jax.tree.leaves(grads)))
(l4, s4, g4), (l1, s1, g1) = results
np.testing.assert_allclose(l4, l1, rtol=1e-5)
for a, b in zip(s4 + g4, s1 + g1):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("SAME")
"""


@pytest.mark.slow
def test_sharded_over_four_fake_devices_matches_one():
    """Parameters replicated, the batch split over 4 devices: the same loss, batch statistics and
    gradients as on one device (batch norm reduces over the global batch under jit)."""
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", FOUR_DEVICES], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SAME" in out.stdout


@pytest.mark.parametrize("kernel, stride, pads, dilation", [
    (3, 1, (1, 1, 1, 1), 1), (3, 2, (1, 1, 1, 1), 1), (3, 2, (0, 1, 2, 0), 1),
    (7, 1, (0, 0, 0, 0), 1),  # MobileFaceNet's global depthwise convolution
    (3, 1, (2, 2, 2, 2), 2),
])
def test_channels_last_depthwise_matches_grouped_convolution(kernel, stride, pads, dilation):
    from cure_jax.models.convert import onnx_nhwc
    from cure_jax.models.convert.onnx_graph import Node
    from cure_jax.models.convert.onnx_ops import run_node

    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 9, 9)).astype(np.float32)
    w = rng.normal(size=(5, 1, kernel, kernel)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    attrs = (("group", 5), ("kernel_shape", (kernel, kernel)), ("pads", pads),
             ("strides", (stride, stride)), ("dilations", (dilation, dilation)))
    node = Node("dw", "Conv", ("x", "w", "b"), ("y",), attrs)
    expected = run_node(node, [jnp.asarray(x), w, b])[0]  # lax grouped convolution, NCHW
    assert onnx_nhwc.takes_channels_last(node, [x, w, b])
    out = onnx_nhwc.run_channels_last(node, [onnx_nhwc.ChannelsLast(x.transpose(0, 2, 3, 1)),
                                             w, b])[0]
    np.testing.assert_allclose(onnx_nhwc.canonical(out), expected, atol=1e-5, rtol=1e-5)
