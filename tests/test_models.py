"""IResNet structure and the cosine head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cure_jax.config import ModelConfig
from cure_jax.losses.common import l2_normalize
from cure_jax.models.backbone import build_model, split_model
from cure_jax.models.heads import CosineHead, FaceModel, cosine_logits
from cure_jax.models.iresnet import DEPTHS, IResNet
from tests import contexts


def _count_blocks(model: IResNet) -> int:
    return len(model.blocks)


@pytest.mark.parametrize("depth", list(DEPTHS))
def test_depths_have_insightface_block_counts(depth):
    model = nnx.eval_shape(lambda: IResNet(depth, width=0.125, input_size=32, embedding_dim=16,
                                           rngs=nnx.Rngs(0)))
    assert _count_blocks(model) == sum(DEPTHS[depth])


@pytest.mark.parametrize("size", [32, 64])
def test_output_shape_and_stage_strides(size):
    model = IResNet("r18", width=0.125, input_size=size, embedding_dim=24, rngs=nnx.Rngs(0))
    x = jnp.zeros((2, size, size, 3))
    assert model(x).shape == (2, 24)
    # Four stride-2 stages: the flattened map entering fc is (size / 16)^2 x 64 channels.
    assert model.fc.kernel.shape == ((size // 16) ** 2 * 64, 24)


def test_stem_and_block_layout_match_arcface_torch():
    model = IResNet("r18", width=1.0, input_size=32, embedding_dim=512, rngs=nnx.Rngs(0))
    assert model.stem_conv.kernel.shape == (3, 3, 3, 64)
    assert model.stem_conv.bias is None
    assert model.stem_prelu.slope.shape == (64,)
    np.testing.assert_allclose(model.stem_prelu.slope[...], 0.25)
    first = model.blocks[0]
    # Each stage opens with a stride-2 block that has a projection shortcut.
    assert first.conv2.strides == 2 and first.down_conv is not None
    assert model.blocks[1].down_conv is None
    assert model.features.scale is None  # the embedding BN's scale is fixed at 1
    assert model.stem_bn.momentum == 0.9 and model.stem_bn.epsilon == 1e-5


def test_conv_init_is_normal_0_1():
    model = IResNet("r18", width=1.0, input_size=32, embedding_dim=64, rngs=nnx.Rngs(0))
    kernel = np.asarray(model.blocks[3].conv1.kernel[...])
    assert abs(kernel.std() - 0.1) < 0.005


def test_eval_view_uses_running_statistics():
    model = IResNet("r18", width=0.125, input_size=32, embedding_dim=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    eval_model = nnx.view(model, use_running_average=True, deterministic=True)
    before = eval_model(x)
    model(x)  # a training-mode call updates the running statistics in place
    after = eval_model(x)  # the view shares the arrays, so it sees them
    assert not np.allclose(before, after)
    np.testing.assert_allclose(eval_model(x[:1]), after[:1], rtol=1e-5, atol=1e-5)


def test_bad_arguments_name_valid_choices():
    with pytest.raises(ValueError, match="r18"):
        IResNet("r19", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_size"):
        IResNet("r18", input_size=100, rngs=nnx.Rngs(0))


def test_cosine_head_is_scale_invariant():
    head = CosineHead(8, 5, rngs=nnx.Rngs(0))
    emb = jax.random.normal(jax.random.key(0), (3, 8))
    np.testing.assert_allclose(head(emb), head(7.0 * emb), rtol=1e-5, atol=1e-6)
    cos = cosine_logits(emb, emb)
    np.testing.assert_allclose(jnp.diag(cos), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(jax.grad(lambda v: l2_normalize(v).sum())(jnp.zeros(4))))


class _BackendCompiles:
    """Counts XLA compilations while active (a jax.monitoring listener stays registered)."""

    active: list | None = None

    @classmethod
    def listen(cls, event, duration, **kwargs):
        del duration, kwargs
        if cls.active is not None and event == "/jax/core/compile/backend_compile_duration":
            cls.active.append(event)


jax.monitoring.register_event_duration_secs_listener(_BackendCompiles.listen)


@pytest.mark.parametrize("depth,width,size,dim,classes", [
    ("r18", 0.125, 32, 32, 8),
    pytest.param("r34", 0.25, 64, 128, 200, marks=pytest.mark.slow)])
def test_build_model_is_one_compile_with_the_op_by_op_arrays(depth, width, size, dim, classes):
    config = ModelConfig(depth=depth, width=width, embedding_dim=dim)
    jax.random.key(0)  # the seed-to-key program, compiled once per process
    _BackendCompiles.active = []
    try:
        built = build_model(config, num_classes=classes, image_size=size, seed=3)
        compiles = len(_BackendCompiles.active)
    finally:
        _BackendCompiles.active = None
    assert compiles == 1
    # The modules constructed op by op: one `jax.random.normal` per kernel, as before batching.
    rngs = nnx.Rngs(params=3)
    reference = FaceModel(IResNet(depth, width=width, input_size=size, embedding_dim=dim,
                                  rngs=rngs), CosineHead(dim, classes, rngs=rngs))
    ours, theirs = nnx.state(built), nnx.state(reference)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs),
                            strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)


def _functional(model):
    """(graph, state, f(state, images) -> embeddings) of a model's backbone in training mode."""
    graph, state = nnx.split(model)

    def embed(state, images):
        return nnx.merge(graph, state).backbone(images)

    return state, embed


@pytest.mark.slow
def test_bfloat16_computes_in_bfloat16_with_float32_parameters_and_embeddings():
    kwargs = dict(num_classes=8, image_size=32, seed=1)
    plain = build_model(ModelConfig(width=0.125, embedding_dim=32), **kwargs)
    mixed = build_model(ModelConfig(width=0.125, embedding_dim=32, dtype="bfloat16"), **kwargs)
    for a, b in zip(jax.tree.leaves(nnx.state(plain)), jax.tree.leaves(nnx.state(mixed)),
                    strict=True):
        assert b.dtype == jnp.float32 and np.array_equal(np.asarray(a), np.asarray(b))
    images = jax.random.uniform(jax.random.key(2), (16, 32, 32, 3), minval=-1.0, maxval=1.0)
    state, embed = _functional(mixed)
    jaxpr = jax.make_jaxpr(embed)(state, images)
    convolutions = contexts.convolutions(jaxpr.jaxpr)
    assert len(convolutions) == 21  # stem + 2 per block (8 blocks) + 4 shortcuts
    assert all(v.aval.dtype == jnp.bfloat16 for eqn in convolutions for v in eqn.invars)
    out_mixed = embed(state, images)
    assert out_mixed.dtype == jnp.float32
    plain_state, plain_embed = _functional(plain)
    out_plain = plain_embed(plain_state, images)
    cosines = jnp.sum(l2_normalize(out_mixed) * l2_normalize(out_plain), axis=-1)
    assert float(jnp.min(cosines)) > 0.99  # bfloat16 keeps 8 bits of mantissa


@pytest.mark.slow
def test_bfloat16_gradients_are_float32_and_close_to_float32_ones():
    kwargs = dict(num_classes=8, image_size=32, seed=1)
    images = jax.random.uniform(jax.random.key(2), (16, 32, 32, 3), minval=-1.0, maxval=1.0)
    grads = []
    for dtype in ("float32", "bfloat16"):
        model = build_model(ModelConfig(width=0.125, embedding_dim=32, dtype=dtype), **kwargs)
        graphs, params, batch_stats = split_model(model)

        def loss(params, graph=graphs.eval, batch_stats=batch_stats):
            embeddings = nnx.merge(graph, params, batch_stats).backbone(images)
            return jnp.mean(jnp.sum(l2_normalize(embeddings)[:, :4], axis=-1))

        grads.append(jax.jit(jax.grad(loss))(params))
    flat = [jnp.concatenate([g.ravel() for g in jax.tree.leaves(tree)]) for tree in grads]
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads[1]))
    cosine = jnp.dot(flat[0], flat[1]) / (jnp.linalg.norm(flat[0]) * jnp.linalg.norm(flat[1]))
    assert float(cosine) > 0.98
    assert abs(float(jnp.linalg.norm(flat[1]) / jnp.linalg.norm(flat[0])) - 1) < 0.05


def test_bfloat16_is_refused_for_a_pretrained_file():
    from cure_jax.config import Config, ConfigError, validate

    config = Config(model=ModelConfig(dtype="bfloat16", pretrained="sface.onnx"))
    with pytest.raises(ConfigError, match="model.dtype=bfloat16"):
        validate(config)


def _with_trained_statistics(model, seed=0):
    """Batch norms with running statistics, scales and biases far from their initial values, so
    that folding them into a convolution is not checked against an identity."""
    rng = np.random.default_rng(seed)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            channels = module.mean[...].shape
            module.mean[...] = jnp.asarray(rng.normal(0, 0.5, channels), jnp.float32)
            module.var[...] = jnp.asarray(rng.uniform(0.2, 3.0, channels), jnp.float32)
            if module.scale is not None:
                module.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, channels), jnp.float32)
            module.bias[...] = jnp.asarray(rng.normal(0, 0.3, channels), jnp.float32)
    return model


@pytest.mark.slow
def test_frozen_batch_norm_folded_into_the_next_convolution_computes_the_plain_form(monkeypatch):
    from cure_jax.models import iresnet

    model = _with_trained_statistics(IResNet("r18", width=0.25, input_size=32, embedding_dim=16,
                                             rngs=nnx.Rngs(0)))
    eval_model = nnx.view(model, use_running_average=True, deterministic=True)
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
    graph, params, rest = nnx.split(eval_model, nnx.Param, ...)

    direction = jnp.asarray(np.random.default_rng(2).normal(size=(4, 16)), jnp.float32)

    def loss(params):  # of the unit embeddings, as every loss of the package reads them
        embeddings = nnx.merge(graph, params, rest)(images)
        return jnp.sum(l2_normalize(embeddings) * direction), embeddings

    calls = []
    original = iresnet._conv_of_batch_norm
    monkeypatch.setattr(iresnet, "_conv_of_batch_norm",
                        lambda *args: calls.append(1) or original(*args))
    (folded_loss, folded), folded_grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert len(calls) == sum(DEPTHS["r18"])  # every block's first batch norm and convolution
    monkeypatch.setattr(iresnet, "_folds", lambda bn, conv: False)
    (plain_loss, plain), plain_grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    magnitude = float(jnp.max(jnp.abs(plain)))
    np.testing.assert_allclose(folded / magnitude, plain / magnitude, atol=1e-5)
    np.testing.assert_allclose(folded_loss, plain_loss, rtol=1e-5, atol=1e-6)
    for path, value in jax.tree_util.tree_leaves_with_path(folded_grads):
        expected = dict(jax.tree_util.tree_leaves_with_path(plain_grads))[path]
        scale = float(jnp.max(jnp.abs(expected))) + 1e-12
        np.testing.assert_allclose(value / scale, expected / scale, atol=2e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_batch_norm_folded_in_training_mode_updates_the_running_statistics_alike(monkeypatch):
    from cure_jax.models import iresnet

    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
    folded = IResNet("r18", width=0.25, input_size=32, embedding_dim=16, rngs=nnx.Rngs(0))
    folded_out = folded(images)
    monkeypatch.setattr(iresnet, "_folds", lambda bn, conv: False)
    plain = IResNet("r18", width=0.25, input_size=32, embedding_dim=16, rngs=nnx.Rngs(0))
    plain_out = plain(images)
    magnitude = float(jnp.max(jnp.abs(plain_out)))
    np.testing.assert_allclose(folded_out / magnitude, plain_out / magnitude, atol=1e-5)
    for ours, theirs in zip(folded.blocks, plain.blocks, strict=True):
        np.testing.assert_allclose(ours.bn1.mean[...], theirs.bn1.mean[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.bn1.var[...], theirs.bn1.var[...], rtol=1e-5, atol=1e-6)
        # The statistics did move from their initial 0 and 1. Past the first block, a block's
        # input is a sum of batch norms' outputs (zero mean over the batch but for rounding), so
        # the variance shows it.
        assert not np.allclose(ours.bn1.var[...], 1.0, rtol=0.0, atol=1e-3)
