"""The baseline unlearning methods (SPEC section 5): label-free labels, each method's step moving
the student the intended way on a tiny problem, phases that resume, and every method end to end.
"""

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import config as config_lib
from cure_jax.embeddings import make_embed_fn
from cure_jax.losses.distill import cross_entropy, distill_kl, head_logits
from cure_jax.methods import (
    bad_teacher,
    boundary_shrink,
    get_method,
    label_free,
    neggrad,
    random_label,
    retrain,
    scrub,
    unsir,
)
from cure_jax.methods.base import Supervision, UnlabelledSet
from cure_jax.optim import sgd
from data_pipelines.pipelines import TargetSource, normalize, target_dataset
from tests.contexts import tiny_context

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = config_lib.apply_overrides(config_lib.load_config("smoke"), [
    "baselines.clusters=4", "baselines.kmeans_restarts=1"])
BASELINES = ("scrub", "bad_teacher", "unsir", "neggrad", "random_label", "grad_ascent",
             "boundary_shrink", "finetune", "retrain")


def _context(folder, config=SMOKE, **kwargs):
    return tiny_context(folder, config, **kwargs)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return _context(tmp_path_factory.mktemp("baselines"))


@pytest.fixture(scope="module")
def labels(context):
    return label_free.make_labels(context)


def _batch(unlabelled, rows, labels_N=None, *, flip=False):
    """Batch {"image", "target", "label"} of `rows`, mirrored with their mirrored targets."""
    images = unlabelled.images[rows][:, :, ::-1] if flip else unlabelled.images[rows]
    target = (unlabelled.teacher_emb_flipped if flip else unlabelled.teacher_emb)[rows]
    labels_B = np.zeros(len(rows), np.int32) if labels_N is None else labels_N[rows]
    return {"image": jnp.asarray(normalize(images)), "target": jnp.asarray(target),
            "label": jnp.asarray(labels_B, jnp.int32)}


@functools.cache
def _embed_fn(graph):
    # One compiled embedding function per graph, shared by every measurement.
    return make_embed_fn(graph)


def _logits(context, state, unlabelled, scale):
    """Head logits [N, K] of the student (evaluation mode) on every image of `unlabelled`."""
    emb = _embed_fn(context.graphs.eval)(state.params, state.batch_stats,
                                         normalize(unlabelled.images))
    return head_logits(emb, state.centres, scale=scale)


def _ce(context, state, unlabelled, labels_N, scale):
    return float(cross_entropy(_logits(context, state, unlabelled, scale),
                               jnp.asarray(labels_N)))


def _run_steps(step, state, batches, count):
    for i in range(count):
        state, metrics = step(state, batches[i % len(batches)], jax.random.key(0))
        assert np.isfinite(float(metrics["loss"]))
    return state


def _state(context, labels, tx):
    return label_free.initial_state(context, tx, labels.centres)


# Labels and losses.


def test_pseudo_labels_are_the_teachers_own_predictions_and_read_no_identity(context, labels):
    assert context.supervision is None
    k = SMOKE.baselines.clusters
    assert labels.centres.shape == (k, context.teacher.params["fc"]["kernel"].shape[1])
    np.testing.assert_allclose(np.linalg.norm(labels.centres, axis=1), 1.0, rtol=1e-5)
    assert labels.forget.shape == (24,) and labels.retain.shape == (48,)
    assert labels.scale == SMOKE.model.scale
    # The fixed head `s cos(t, c)` ranks each image's pseudo-label first for the teacher.
    for unlabelled, ids in ((context.forget, labels.forget), (context.retain, labels.retain)):
        logits = head_logits(jnp.asarray(unlabelled.teacher_emb), labels.centres,
                                        scale=labels.scale)
        np.testing.assert_array_equal(np.argmax(logits, axis=1), ids)
    # Forget images differ from retain images: some cluster is mostly theirs.
    assert len(np.unique(labels.forget)) < k or len(np.unique(labels.retain)) < k


def test_true_labels_come_from_the_supervision(context):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 32)).astype(np.float32)
    supervision = Supervision(rng.integers(0, 6, 24), rng.integers(0, 6, 48), 3.0 * centres,
                              scale=16.0)
    result = label_free.make_labels(dataclasses.replace(context, supervision=supervision))
    np.testing.assert_array_equal(result.forget, supervision.forget_labels)
    np.testing.assert_array_equal(result.retain, supervision.retain_labels)
    np.testing.assert_allclose(result.centres,
                               centres / np.linalg.norm(centres, axis=1, keepdims=True),
                               rtol=1e-5)
    assert result.scale == 16.0


def test_the_head_scale_is_the_baselines_own_and_a_saturated_head_is_warned_of(context, capsys):
    # The smoke teacher at the smoke scale: cross-entropies that move the student, no warning.
    assert label_free.make_labels(context).scale == SMOKE.model.scale
    assert "warning" not in capsys.readouterr().err
    saturated = config_lib.apply_overrides(SMOKE, ["baselines.scale=5000"])
    result = label_free.make_labels(dataclasses.replace(context, config=saturated))
    assert result.scale == 5000.0
    assert label_free.teacher_median_ce(context.forget.teacher_emb, result.forget,
                                        result.centres, 5000.0) < label_free.SATURATED_CE
    assert "lower baselines.scale" in capsys.readouterr().err
    # Retraining trains its own head: its labels do not depend on the scale, nor its results.
    assert not "baselines.scale".startswith(get_method("retrain").reads)


def test_distillation_kl_matches_numpy():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 5, 7)) * 3
    temperature = 4.0

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(teacher / temperature), softmax(student / temperature)
    expected = temperature**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = distill_kl(jnp.asarray(teacher), jnp.asarray(student),
                                temperature=temperature)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    assert float(distill_kl(jnp.asarray(teacher), jnp.asarray(teacher),
                                       temperature=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_random_other_labels_are_never_the_own_and_cover_the_others():
    own = np.repeat(np.arange(5), 400)
    wrong = random_label.random_other_labels(own, num_classes=5, seed=0)
    assert wrong.dtype == np.int32 and np.all(wrong != own) and wrong.max() == 4
    for label in range(5):
        counts = np.bincount(wrong[own == label], minlength=5)
        assert counts[label] == 0 and counts.min(initial=400, where=np.arange(5) != label) > 70
    with pytest.raises(ValueError, match="two classes"):
        random_label.random_other_labels(own, num_classes=1, seed=0)


def test_labelled_batches_flip_image_target_and_label_together():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    targets = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    source = TargetSource(images, targets, -targets, np.arange(8), 100 + np.arange(8))
    dataset = target_dataset(source, batch_size=4, seed=0)
    flips = 0
    for index in range(6):
        batch = dataset[index]
        for image, target, label in zip(batch["image"], batch["target"], batch["label"],
                                        strict=True):
            row = int(label) % 100
            mirrored = label >= 100
            flips += int(mirrored)
            assert target[0] == (-row if mirrored else row)
            expected = images[row][:, ::-1] if mirrored else images[row]
            np.testing.assert_array_equal(image, normalize(expected))
    assert 0 < flips < 24


# Each method's step moves the student the intended way.


def test_gradient_ascent_raises_forget_ce_with_one_compiled_step(context, labels):
    tx = sgd(1e-3, 0.9)
    step = label_free.make_student_step(
        context.graphs, tx, label_free.classifier_loss(scale=labels.scale, sign=-1.0))
    state = _state(context, labels, tx)
    before = _ce(context, state, context.forget, labels.forget, labels.scale)
    batches = [_batch(context.forget, np.arange(8) + 8 * i, labels.forget, flip=i == 1)
               for i in range(3)]
    state = _run_steps(step, state, batches, 6)
    assert step._cache_size() == 1
    assert int(state.step) == 6
    after = _ce(context, state, context.forget, labels.forget, labels.scale)
    assert after > before + 0.5, (before, after)
    # Frozen batch norm: the running statistics are the teacher's.
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(state.batch_stats)[0]),
        np.asarray(jax.tree.leaves(context.teacher.batch_stats)[0]))


def test_neggrad_raises_forget_ce_and_keeps_retain_ce(context, labels):
    tx = sgd(1e-3, 0.9)
    step = label_free.make_student_step(context.graphs, tx,
                                        neggrad.neggrad_loss(scale=labels.scale))
    state = _state(context, labels, tx)
    forget_before = _ce(context, state, context.forget, labels.forget, labels.scale)
    retain_before = _ce(context, state, context.retain, labels.retain, labels.scale)
    batches = [{"forget": _batch(context.forget, np.arange(8) + 8 * (i % 3), labels.forget),
                "retain": _batch(context.retain, np.arange(8) + 8 * i, labels.retain)}
               for i in range(6)]
    state = _run_steps(step, state, batches, 6)
    forget_after = _ce(context, state, context.forget, labels.forget, labels.scale)
    retain_after = _ce(context, state, context.retain, labels.retain, labels.scale)
    assert forget_after > forget_before + 0.5, (forget_before, forget_after)
    assert retain_after - retain_before < 0.25 * (forget_after - forget_before), (
        retain_before, retain_after)


def test_finetune_and_random_labels_lower_ce_to_their_labels(context, labels):
    tx = sgd(1e-3, 0.9)
    step = label_free.make_student_step(context.graphs, tx, label_free.classifier_loss(
        scale=labels.scale))
    wrong = random_label.random_other_labels(labels.forget, num_classes=len(labels.centres),
                                             seed=0)
    for unlabelled, ids in ((context.forget, wrong), (context.retain, labels.retain)):
        state = _state(context, labels, tx)
        before = _ce(context, state, unlabelled, ids, labels.scale)
        batches = [_batch(unlabelled, np.arange(8) + 8 * i, ids) for i in range(3)]
        state = _run_steps(step, state, batches, 6)
        after = _ce(context, state, unlabelled, ids, labels.scale)
        assert after < before - 0.05 * abs(before), (before, after)
    assert step._cache_size() == 1


def _kl_to(context, state, unlabelled, target_NxD, labels, temperature):
    target = head_logits(jnp.asarray(target_NxD), labels.centres, scale=labels.scale)
    return float(distill_kl(target, _logits(context, state, unlabelled, labels.scale),
                                       temperature=temperature))


def test_scrub_max_pass_raises_forget_kl_and_min_pass_lowers_retain_ce(context, labels):
    settings = SMOKE.scrub
    tx = sgd(1e-3, 0.9)
    max_step = label_free.make_student_step(context.graphs, tx, scrub.max_loss(
        scale=labels.scale, temperature=settings.temperature))
    min_step = label_free.make_student_step(context.graphs, tx, scrub.min_loss(
        scale=labels.scale, temperature=settings.temperature, gamma=settings.gamma,
        alpha=settings.alpha))
    state = _state(context, labels, tx)
    # At the teacher the KL and its gradient are 0; start a little away from it.
    rng = np.random.default_rng(3)
    state = state._replace(params=jax.tree.map(
        lambda p: p + 0.02 * np.std(p) * rng.normal(size=p.shape).astype(np.float32),
        state.params))
    kl_before = _kl_to(context, state, context.forget, context.forget.teacher_emb, labels,
                       settings.temperature)
    state = _run_steps(max_step, state, [_batch(context.forget, np.arange(8) + 8 * i)
                                         for i in range(3)], 6)
    kl_after = _kl_to(context, state, context.forget, context.forget.teacher_emb, labels,
                      settings.temperature)
    assert kl_after > 2 * kl_before, (kl_before, kl_after)

    ce_before = _ce(context, state, context.retain, labels.retain, labels.scale)
    state = _run_steps(min_step, state, [_batch(context.retain, np.arange(8) + 8 * i,
                                                labels.retain) for i in range(6)], 6)
    ce_after = _ce(context, state, context.retain, labels.retain, labels.scale)
    assert ce_after < ce_before - 0.05 * abs(ce_before), (ce_before, ce_after)
    assert max_step._cache_size() == 1 and min_step._cache_size() == 1


def test_bad_teacher_forget_outputs_approach_the_incompetent_teacher(context, labels, tmp_path):
    bad, bad_flipped = bad_teacher.incompetent_embeddings(dataclasses.replace(context,
                                                                              folder=tmp_path))
    assert bad.shape == context.forget.teacher_emb.shape
    assert (tmp_path / "incompetent_teacher.npz").exists()
    tx = sgd(1e-3, 0.9)  # the method's Adam at 1e-4 is slower than a test
    step = label_free.make_student_step(context.graphs, tx, bad_teacher.follow_loss(
        scale=labels.scale, temperature=1.0))
    state = _state(context, labels, tx)
    forget = UnlabelledSet(context.forget.images, bad, bad_flipped)
    before = _kl_to(context, state, context.forget, bad, labels, 1.0)
    state = _run_steps(step, state, [_batch(forget, np.arange(8) + 8 * i, flip=i == 2)
                                     for i in range(3)], 6)
    after = _kl_to(context, state, context.forget, bad, labels, 1.0)
    assert after < 0.7 * before, (before, after)


def test_unsir_noise_raises_mse_to_the_forget_logits(context, labels):
    tx = sgd(1e-3, 0.9)
    state = _state(context, labels, tx)
    batch = {"forget": _batch(context.forget, np.arange(8))}

    def mse(steps):
        prepare = jax.jit(unsir.make_noise(context.graphs.eval, scale=labels.scale,
                                           steps=steps, lr=SMOKE.unsir.noise_lr))
        noise = prepare(state, batch, jax.random.key(0))["noise"]
        assert noise.shape == batch["forget"]["image"].shape
        assert float(jnp.min(noise)) >= -1.0 and float(jnp.max(noise)) <= 1.0
        embed = _embed_fn(context.graphs.eval)

        def logits(images):
            return head_logits(embed(state.params, state.batch_stats, images),
                                          state.centres, scale=labels.scale)

        return float(jnp.mean(jnp.square(logits(noise) - logits(batch["forget"]["image"]))))

    assert mse(5) > 1.05 * mse(0)


def test_boundary_shrink_moves_forget_predictions_to_the_neighbour_class(context, labels):
    plain, mirrored = boundary_shrink.neighbour_labels(context, labels)
    assert plain.shape == mirrored.shape == (24,)
    assert np.all(plain != labels.forget) and np.all(mirrored != labels.forget)
    tx = sgd(1e-3, 0.9)
    step = label_free.make_student_step(context.graphs, tx, label_free.classifier_loss(
        scale=labels.scale))
    state = _state(context, labels, tx)

    def agreement(state):
        return float(np.mean(np.argmax(_logits(context, state, context.forget, labels.scale),
                                       axis=1) == plain))

    before = _ce(context, state, context.forget, plain, labels.scale)
    assert agreement(state) == 0.0  # the teacher predicts the own class
    state = _run_steps(step, state, [_batch(context.forget, np.arange(8) + 8 * i, plain)
                                     for i in range(3)], 9)
    after = _ce(context, state, context.forget, plain, labels.scale)
    assert after < before - 0.05 * abs(before), (before, after)
    assert agreement(state) > 0.25


@pytest.mark.slow
def test_retrain_learns_the_retain_pseudo_labels_from_scratch(tmp_path):
    config = config_lib.apply_overrides(SMOKE, ["retrain.epochs=12", "teacher.lr=0.01"])
    context = _context(tmp_path, config, kinds=4)
    backbone = get_method("retrain").run(context)
    assert jax.tree.structure(backbone.params) == jax.tree.structure(context.teacher.params)
    rows = [json.loads(line) for line in
            (tmp_path / "retrain" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 * (48 // config.teacher.batch_size)
    # Batch accuracy on the retain pseudo-labels (4 classes): from near chance to well above.
    first, last = (np.mean([row["accuracy"] for row in part]) for part in (rows[:2], rows[-3:]))
    assert last > max(0.7, first + 0.2), rows
    with pytest.raises(ValueError, match="fewer than one batch"):
        retrain.check_request(config, 24, 8)


# Phases resume; requests are checked.


def test_a_finished_phase_is_restored_not_rerun(context, tmp_path):
    config = config_lib.apply_overrides(SMOKE, ["random_label.epochs=1",
                                                "random_label.repair_epochs=1"])
    local = dataclasses.replace(context, config=config, folder=tmp_path)
    first = get_method("random_label").run(local)
    relabel_log = tmp_path / "relabel" / "metrics.jsonl"
    logged = relabel_log.read_text()
    assert len(logged.splitlines()) >= 1
    # The second phase is lost (as if killed before it started); the first is not redone.
    shutil.rmtree(tmp_path / "repair")
    second = get_method("random_label").run(local)
    assert relabel_log.read_text() == logged
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "retrain"])
def test_requests_too_small_for_a_batch_or_the_clusters_are_refused(name):
    check = get_method(name).check
    with pytest.raises(ValueError, match="fewer than one batch"):
        check(SMOKE, 4, 40)
    with pytest.raises(ValueError, match="baselines.clusters=100"):
        check(config_lib.apply_overrides(SMOKE, ["baselines.clusters=100"]), 16, 48)
    check(config_lib.apply_overrides(SMOKE, ["baselines.clusters=100",
                                             "baselines.labels=true"]), 16, 48)


# End to end through the command line.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.mark.slow
def test_every_baseline_runs_end_to_end(workdir):
    # One command for all nine: one process, one teacher, one compilation of what they share.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "cure_jax.compare", "--config", "smoke",
                          "--workdir", str(workdir), "--methods", ",".join(BASELINES),
                          "--set", "baselines.clusters=4"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in BASELINES:
        metrics = json.loads((workdir / name / "metrics.json").read_text())
        assert metrics["method"] == name
        assert np.isfinite(metrics["forget_map_after"]), name
        if name == "retrain":
            # A model of its own: nothing read through the teacher's class centres is reported.
            assert metrics["head_scored"] == 0.0
            assert "forget_acc_after" not in metrics and "ues" not in metrics
        else:
            assert np.isfinite(metrics["forget_acc_after"]), name
