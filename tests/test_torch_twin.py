"""The PyTorch twin, and IResNet imports from `.pth` and from ONNX against PyTorch itself."""

import jax
import numpy as np
import pytest
from flax import nnx

from cure_jax.models.backbone import split_model
from cure_jax.models.convert.onnx_import import import_onnx
from cure_jax.models.convert.torch_state import load_arcface_iresnet
from cure_jax.models.iresnet import IResNet

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install -e '.[torch]'")
from tools.torch_iresnet import TorchIResNet, count_trainable  # noqa: E402

SMALL = dict(width=0.25, input_size=32, embedding_dim=16)


def randomised_twin(depth="r18", seed=0, **kwargs) -> TorchIResNet:
    """A twin whose BN statistics, scales, shifts and PReLU slopes are random too (a fresh one
    has BN at identity, which would hide a mapping error)."""
    torch.manual_seed(seed)
    model = TorchIResNet(depth, **{**SMALL, **kwargs})
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("running_mean", "bias")):
                tensor.copy_(0.1 * torch.randn_like(tensor))
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif name.endswith("prelu.weight") or (name.endswith("weight") and tensor.ndim == 1
                                                   and not name.startswith("features")):
                tensor.copy_(torch.rand_like(tensor) * 0.5 + 0.5)
    return model.eval()


def calibrated(twin: TorchIResNet) -> TorchIResNet:
    """The twin with every BN's running statistics set to its statistics on a batch of images,
    as training leaves them: activations of a deep random twin then stay of order one (without
    this, r50 / r100 embeddings reach the hundreds and float32 rounding alone exceeds 1e-4)."""
    for module in twin.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, its statistics
    twin.train()
    with torch.no_grad():
        twin(images(batch=32, seed=9)[1])
    return twin.eval()


def images(batch=6, size=32, seed=1):
    nhwc = np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    return nhwc, torch.from_numpy(nhwc.transpose(0, 3, 1, 2).copy())


def jax_embed(model, x, *, train=False):
    """Embeddings in evaluation mode, or in training mode (batch statistics), jitted."""
    graphs, params, batch_stats = split_model(model)
    graph = graphs.train if train else graphs.eval
    return np.asarray(jax.jit(lambda p, s, v: nnx.merge(graph, p, s)(v))(params, batch_stats, x))


@pytest.mark.parametrize("depth, kwargs", [
    ("r18", dict(width=1.0, input_size=112, embedding_dim=512)),
    ("r34", dict(width=0.5, input_size=64, embedding_dim=128)),
    ("r50", dict(width=0.25, input_size=32, embedding_dim=64)),
    ("r100", dict(width=0.125, input_size=112, embedding_dim=32)),
])
def test_twin_has_our_parameter_count(depth, kwargs):
    ours = nnx.eval_shape(lambda: IResNet(depth, rngs=nnx.Rngs(0), **kwargs))
    ours_count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    twin = TorchIResNet(depth, **kwargs)
    assert count_trainable(twin) == ours_count


@pytest.mark.slow
def test_pth_import_matches_torch_in_eval_and_training_mode(tmp_path):
    twin = randomised_twin()
    path = tmp_path / "backbone.pth"
    torch.save(twin.state_dict(), path)
    model = load_arcface_iresnet(path)
    x_nhwc, x_nchw = images()
    with torch.no_grad():
        expected = twin(x_nchw).numpy()
    assert np.max(np.abs(jax_embed(model, x_nhwc) - expected)) <= 1e-4
    twin.train()
    with torch.no_grad():
        expected_train = twin(x_nchw).numpy()
    out_train = jax_embed(model, x_nhwc, train=True)
    assert np.max(np.abs(out_train - expected_train)) <= 1e-4
    assert np.max(np.abs(expected_train - expected)) > 1e-2  # the two modes really differ


def export_twin(twin, path, *, keep_batch_norm: bool):
    """torch.onnx.export as arcface_torch's torch2onnx (TorchScript exporter); eval mode folds
    each conv's following BN, PRESERVE keeps every BatchNormalization node."""
    mode = torch.onnx.TrainingMode.PRESERVE if keep_batch_norm else torch.onnx.TrainingMode.EVAL
    x = torch.zeros(1, 3, SMALL["input_size"], SMALL["input_size"])
    torch.onnx.export(twin, x, str(path), dynamo=False, input_names=["data"],
                      output_names=["embedding"], dynamic_axes={"data": {0: "N"}},
                      training=mode, do_constant_folding=not keep_batch_norm, opset_version=17)
    return path


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("keep_batch_norm", [False, True])
def test_onnx_import_of_the_twin_matches_torch(tmp_path, keep_batch_norm):
    pytest.importorskip("onnx", reason="onnx is needed to export the twin")
    twin = randomised_twin(seed=2)
    model = import_onnx(export_twin(twin, tmp_path / "twin.onnx",
                                    keep_batch_norm=keep_batch_norm))
    assert model.input_range == "-1..1" and model.embedding_dim == 16
    x_nhwc, x_nchw = images(seed=3)
    with torch.no_grad():
        expected = twin(x_nchw).numpy()
    assert np.max(np.abs(jax_embed(model, x_nhwc) - expected)) <= 1e-4
    if keep_batch_norm:  # batch statistics exist only where the graph kept its BN nodes
        twin.train()
        with torch.no_grad():
            expected_train = twin(x_nchw).numpy()
        assert np.max(np.abs(jax_embed(model, x_nhwc, train=True) - expected_train)) <= 1e-4


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("depth", ["r34", "r50", "r100"])
def test_onnx_import_of_deeper_twins_matches_torch(tmp_path, depth):
    twin = calibrated(randomised_twin(depth, seed=4, width=0.125))
    model = import_onnx(export_twin(twin, tmp_path / f"{depth}.onnx", keep_batch_norm=False))
    x_nhwc, x_nchw = images(batch=2, seed=5)
    with torch.no_grad():
        expected = twin(x_nchw).numpy()
    assert np.max(np.abs(jax_embed(model, x_nhwc) - expected)) <= 1e-4
