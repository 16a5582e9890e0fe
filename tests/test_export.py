"""Export: imported ONNX graphs and IResNets back to ONNX (checked in onnxruntime) and to .pth."""

import hashlib

import jax
import numpy as np
import pytest
from flax import nnx

from cure_jax.export import (
    export_iresnet_onnx,
    export_onnx_backbone,
    file_sha256,
    save_arcface_pth,
)
from cure_jax.models.convert.onnx_import import import_onnx
from cure_jax.models.iresnet import IResNet, in_float32
from tests import onnx_graphs
from tests.test_onnx_import import REPO, SFACE, lfw_faces, normalise, save, shared_path
from tests.test_torch_state import random_iresnet

onnx = pytest.importorskip("onnx", reason="the onnx package writes the exported graphs")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the test extra) checks exports")


def perturb(model, seed: int):
    """Moves every parameter and batch statistic, as training would, so that an export that
    wrote the original values back would fail."""
    keys = iter(jax.random.split(jax.random.key(seed), 1000))
    for _, variable in nnx.to_flat_state(nnx.state(model)):
        value = variable[...]
        # Relative noise: keeps signs (positive variances) and each tensor's scale.
        variable[...] = value * (1 + 0.05 * jax.random.normal(next(keys), value.shape))


def eval_embed(model, x):
    view = nnx.view(model, use_running_average=True, deterministic=True)
    return np.asarray(jax.jit(lambda v: view(v))(x))


def run_onnx(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"cure" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"cure" * 1000).hexdigest()


def test_trained_onnx_backbone_exports_dequantized_and_matches(tmp_path):
    model = import_onnx(save(onnx_graphs.tiny_recognizer(), tmp_path))
    pixels = np.random.default_rng(4).integers(0, 256, (3, 16, 16, 3)).astype(np.float32)
    before = eval_embed(model, normalise(pixels))
    perturb(model, 0)
    out_path = tmp_path / "trained.onnx"
    digest = export_onnx_backbone(model, out_path)
    assert digest == file_sha256(out_path)
    exported = onnx.load(out_path)
    ops = {node.op_type for node in exported.graph.node}
    assert "DequantizeLinear" not in ops and "Constant" not in ops
    assert [i.name for i in exported.graph.input] == ["data"]
    assert all(init.data_type == onnx.TensorProto.FLOAT or init.name.endswith("shape")
               for init in exported.graph.initializer)
    expected = eval_embed(model, normalise(pixels))
    assert np.max(np.abs(expected - before)) > 1e-2  # the trained weights differ
    got = run_onnx(out_path, {"data": pixels.transpose(0, 3, 1, 2)})
    assert np.max(np.abs(got - expected)) <= 1e-4
    # Importing the export again gives the trained model.
    again = eval_embed(import_onnx(out_path), normalise(pixels))
    assert np.max(np.abs(again - expected)) <= 1e-5


@pytest.mark.slow
def test_sface_export_runs_in_onnxruntime_and_matches(tmp_path):
    path = shared_path("CURE_JAX_MODELS", REPO.parent / "shared" / "models", SFACE)
    model = import_onnx(path)
    perturb(model, 1)
    faces = lfw_faces(2)
    expected = eval_embed(model, normalise(faces))
    out_path = tmp_path / "sface_trained.onnx"
    export_onnx_backbone(model, out_path)
    for k in range(2):  # the original graph takes one image at a time
        got = run_onnx(out_path, {"data": faces[k:k + 1].transpose(0, 3, 1, 2)
                                  .astype(np.float32)})
        assert np.max(np.abs(got - expected[k:k + 1])) <= 1e-4


def small_iresnet(seed: int = 0) -> IResNet:
    return random_iresnet(seed=seed, width=0.25, input_size=32, embedding_dim=16)


def test_iresnet_exports_to_onnx_and_matches(tmp_path):
    model = small_iresnet()
    path = tmp_path / "iresnet.onnx"
    export_iresnet_onnx(model, path)
    x = np.random.default_rng(5).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    got = run_onnx(path, {"data": x.transpose(0, 3, 1, 2)})
    assert got.shape == (4, 16)
    assert np.max(np.abs(got - eval_embed(model, x))) <= 1e-4
    # And our own importer reads it back.
    assert np.max(np.abs(eval_embed(import_onnx(path), x) - got)) <= 1e-4


def test_iresnet_pth_loads_into_the_twin_and_matches(tmp_path):
    torch = pytest.importorskip("torch", reason="writing .pth needs the torch extra")
    from tools.torch_iresnet import TorchIResNet

    model = small_iresnet(1)
    path = tmp_path / "backbone.pth"
    save_arcface_pth(model, path)
    twin = TorchIResNet("r18", width=0.25, input_size=32, embedding_dim=16)
    twin.load_state_dict(torch.load(path, weights_only=True), strict=True)
    twin.eval()
    x = np.random.default_rng(6).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        got = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.max(np.abs(got - eval_embed(model, x))) <= 1e-4


@pytest.mark.slow
def test_a_bfloat16_backbone_exports_as_its_float32_evaluation(tmp_path):
    """A mixed-precision IResNet goes out with float32 weights computing in float32: the check
    holds the file to the float32 evaluation of the same arrays, within 1e-4."""
    from cure_jax import model_files
    from cure_jax.config import Config, ModelConfig
    from cure_jax.models.backbone import Backbone, build_model, split_model

    config = Config(model=ModelConfig(width=0.125, embedding_dim=32, dtype="bfloat16"))
    model = build_model(config.model, num_classes=4, image_size=32, seed=0)
    perturb(model, 1)
    graphs, params, batch_stats = split_model(model.backbone)
    pixels = np.asarray(jax.random.randint(jax.random.key(3), (4, 32, 32, 3), 0, 256), np.uint8)
    record = model_files.export_backbone(config, graphs.eval, Backbone(params, batch_stats),
                                         tmp_path / "student", pixels, who="student")
    assert record["student_export_max_abs_diff"] <= 1e-4
    images = (pixels.astype(np.float32) / 255 - 0.5) / 0.5
    session_input = ort.InferenceSession(str(tmp_path / "student.onnx")).get_inputs()[0].name
    exported = run_onnx(tmp_path / "student.onnx", {session_input: images.transpose(0, 3, 1, 2)})
    as_float32 = np.asarray(jax.jit(
        lambda x: in_float32(nnx.merge(graphs.eval, params, batch_stats))(x))(images))
    mixed = np.asarray(jax.jit(lambda x: nnx.merge(graphs.eval, params, batch_stats)(x))(images))
    assert np.max(np.abs(exported - as_float32)) <= 1e-4
    assert np.max(np.abs(exported - mixed)) > 1e-3  # the bfloat16 evaluation itself differs
