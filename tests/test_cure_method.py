"""The CURE method: one compiled step that moves forget embeddings away from the teacher and keeps
retain embeddings, cluster refreshes, and requests refused before training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import clustering, sharding
from cure_jax import config as config_lib
from cure_jax.embeddings import make_embed_fn
from cure_jax.losses.common import cosine
from cure_jax.methods import cure, get_method
from cure_jax.optim import lr_schedule, make_optimizer
from data_pipelines.pipelines import normalize
from tests.contexts import tiny_context

SMOKE = config_lib.load_config("smoke")


def _context(tmp_path, config=SMOKE, **kwargs):
    return tiny_context(tmp_path, config, **kwargs)


def _batch(context, rows_f, rows_r):
    def side(unlabelled, rows):
        return {"image": jnp.asarray(normalize(unlabelled.images[rows])),
                "target": jnp.asarray(unlabelled.teacher_emb[rows]),
                "index": jnp.asarray(rows, jnp.int32)}
    return {"forget": side(context.forget, rows_f), "retain": side(context.retain, rows_r)}


def _mean_cos(context, backbone_params, stats, unlabelled):
    embed = make_embed_fn(context.graphs.eval)
    emb = embed(backbone_params, stats, normalize(unlabelled.images))
    return float(jnp.mean(cosine(emb, jnp.asarray(unlabelled.teacher_emb))))


def test_step_compiles_once_and_erases_forget_but_keeps_retain(tmp_path):
    config = config_lib.apply_overrides(SMOKE, ["student.lr=0.001"])
    context = _context(tmp_path, config)
    tx = make_optimizer(config.student, 3)
    state = cure.initial_state(context, tx, jax.random.key(0))
    step = cure.make_cure_step(context.graphs, tx, config.cure,
                               lr_schedule(config.student, 3))
    for i in range(15):
        rows_f = np.arange(8) + 8 * (i % 3)
        rows_r = np.arange(8) + 8 * (i % 6)
        state, metrics = step(state, _batch(context, rows_f, rows_r), jax.random.key(0))
        assert np.isfinite(float(metrics["loss"]))
    assert step._cache_size() == 1
    assert int(state.step) == 15
    params, stats = state.params["backbone"], state.batch_stats
    forget_cos = _mean_cos(context, params, stats, context.forget)
    retain_cos = _mean_cos(context, params, stats, context.retain)
    # The teacher is at cosine 1 with itself on both sets; CURE separates them.
    assert forget_cos < retain_cos - 0.2, (forget_cos, retain_cos)
    assert retain_cos > 0.8


def test_a_zero_weight_removes_its_term_from_the_step(tmp_path):
    config = config_lib.apply_overrides(SMOKE, ["cure.w_pl=0", "cure.w_con=0"])
    context = _context(tmp_path, config)
    tx = make_optimizer(config.student, 3)
    state = cure.initial_state(context, tx, jax.random.key(0))
    step = cure.make_cure_step(context.graphs, tx, config.cure,
                               lr_schedule(config.student, 3))
    _, metrics = step(state, _batch(context, np.arange(8), np.arange(8)), jax.random.key(0))
    assert float(metrics["L_pl"]) == 0.0 and float(metrics["L_con"]) == 0.0
    assert float(metrics["L_cosf"]) != 0.0
    weighted = sum(getattr(config.cure, f"w_{n}") * float(metrics[f"L_{n}"])
                   for n in ("pl", "cosf", "con", "cosr", "fm", "fd"))
    np.testing.assert_allclose(float(metrics["loss"]), weighted, rtol=1e-5)


def test_initial_clusters_come_from_the_teacher_and_refresh_resets_the_head(tmp_path):
    context = _context(tmp_path)
    tx = make_optimizer(context.config.student, 3)
    state = cure.initial_state(context, tx, jax.random.key(0))
    k_f = context.config.cure.forget_clusters
    assert state.forget_centroids.shape == (k_f, context.teacher.params["fc"]["kernel"].shape[1])
    np.testing.assert_allclose(np.linalg.norm(state.params["head"], axis=1), 1.0, rtol=1e-5)
    labels = np.asarray(state.pseudo_labels)
    assert labels.shape == (len(context.forget),) and labels.max() < k_f
    # y~ is the farthest cluster from the nearest one: never the nearest itself.
    teacher = context.forget.teacher_emb
    nearest = np.argmax(np.asarray(state.forget_centroids) @ (
        teacher / np.linalg.norm(teacher, axis=1, keepdims=True)).T, axis=0)
    assert np.all(labels != nearest)

    moved = state._replace(params={"backbone": state.params["backbone"],
                                   "head": jnp.zeros_like(state.params["head"])})
    refreshed = cure.make_refresh(context, jax.random.key(1))(moved)
    np.testing.assert_allclose(np.asarray(refreshed.params["head"]),
                               np.asarray(refreshed.forget_centroids))
    keep = dataclasses.replace(context, config=config_lib.apply_overrides(
        SMOKE, ["cure.head_reset=keep"]))
    kept = cure.make_refresh(keep, jax.random.key(1))(moved)
    assert float(jnp.abs(kept.params["head"]).max()) == 0.0


@pytest.mark.parametrize("init", ["k-means++", "k-means||"])
def test_refresh_reuses_the_initial_clusterings_compilation(tmp_path, init):
    # The training state lives on the mesh; the refresh's k-means inputs must be placed as the
    # initial clustering's were, or every refresh of a run compiles k-means again.
    config = config_lib.apply_overrides(SMOKE, [f"cure.kmeans_init={init}"])
    context = _context(tmp_path, config)
    tx = make_optimizer(context.config.student, 3)
    state = sharding.replicate(cure.initial_state(context, tx, jax.random.key(0)), context.mesh)
    jitted = (clustering._kmeans_jit, clustering._assign_jit, clustering.farthest_cluster_map)
    compiled = [fn._cache_size() for fn in jitted]
    refresh = cure.make_refresh(context, jax.random.key(1))
    state = refresh(refresh(state._replace(step=state.step + 3)))
    assert [fn._cache_size() for fn in jitted] == compiled


def test_kmeans_init_setting_reaches_the_forget_clustering():
    points = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    key = jax.random.key(2)
    for init in ("k-means++", "k-means||"):
        config = dataclasses.replace(SMOKE.cure, kmeans_init=init)
        centroids, _, _ = cure.cluster_forget(key, jnp.asarray(unit), config)
        direct = clustering.kmeans(key, unit, num_clusters=config.forget_clusters,
                                   num_iters=config.kmeans_iters,
                                   num_restarts=config.kmeans_restarts, cosine=True, init=init)
        np.testing.assert_array_equal(centroids, direct.centroids)
    with pytest.raises(config_lib.ConfigError, match="kmeans_init"):
        config_lib.apply_overrides(SMOKE, ["cure.kmeans_init=kmeans||"])


def test_requests_the_method_cannot_serve_are_refused(tmp_path):
    check = get_method("cure").check
    with pytest.raises(ValueError, match="forget_clusters=2 is more than the 1 forget"):
        check(config_lib.apply_overrides(SMOKE, ["student.batch_size=1"]), 1, 40)
    with pytest.raises(ValueError, match="fewer than one batch"):
        check(SMOKE, 4, 40)
    with pytest.raises(ValueError, match="valid: .*cure"):
        get_method("nope")


def test_dispersion_term_spreads_each_forget_group(tmp_path):
    from cure_jax.methods.dispersion import without_forget_terms

    config = config_lib.apply_overrides(SMOKE, ["student.lr=0.003", "dispersion.weight=1"])
    context = _context(tmp_path, config)
    cure_config = without_forget_terms(config.cure, 1.0)
    tx = make_optimizer(config.student, 3)
    state = cure.initial_state(context, tx, jax.random.key(0), cure_config)
    groups = np.asarray(state.groups)
    step = cure.make_cure_step(context.graphs, tx, cure_config, lr_schedule(config.student, 3),
                               dispersion=config.dispersion)
    embed = make_embed_fn(context.graphs.eval)

    def within_group_cos(params, stats):
        z = np.asarray(embed(params, stats, normalize(context.forget.images)))
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        same = (groups[:, None] == groups[None, :]) & ~np.eye(len(groups), dtype=bool)
        return float((z @ z.T)[same].mean())

    before = within_group_cos(state.params["backbone"], state.batch_stats)
    for i in range(10):
        state, metrics = step(state, _batch(context, np.arange(8) + 8 * (i % 3),
                                            np.arange(8) + 8 * (i % 6)), jax.random.key(0))
    assert step._cache_size() == 1
    assert "L_disp" in metrics and float(metrics["L_pl"]) == 0.0
    after = within_group_cos(state.params["backbone"], state.batch_stats)
    assert after < before - 0.1, (before, after)


def test_dispersion_length_scales_the_decay_milestones():
    from cure_jax.methods.dispersion import dispersion_optim

    config = config_lib.apply_overrides(SMOKE, ["student.epochs=20", "student.milestones=10,15",
                                                "dispersion.epochs=40", "dispersion.lr=0.003"])
    optim = dispersion_optim(config.student, config.dispersion)
    assert (optim.epochs, optim.milestones, optim.lr) == (40, (20.0, 30.0), 0.003)
    same = config_lib.apply_overrides(config, ["dispersion.epochs=0"])
    assert dispersion_optim(same.student, same.dispersion).epochs == 20
    with pytest.raises(ValueError, match="dispersion.epochs=-1"):
        get_method("dispersion").check(
            config_lib.apply_overrides(same, ["dispersion.epochs=-1"]), 16, 48)
