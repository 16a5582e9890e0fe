"""Tests of the unlearning metrics: UES against the CURE paper's table, the rest by hand."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.metrics import unlearning as um

TOL = dict(rtol=1e-5, atol=1e-6)

# CURE paper, CASIA-WebFace: (forget acc, retain acc, UES) after unlearning; before 80.85 / 87.12.
BEFORE = (80.85, 87.12)
PAPER = {
    "SCRUB": (6.60, 19.08, 0.0687),
    "BadTeacher": (30.09, 67.17, 0.1994),
    "UNSIR": (20.74, 60.17, 0.2171),
    "Adv NegGrad": (20.78, 45.01, 0.1298),
    "CURE": (6.91, 47.34, 0.2290),
}


def _np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _probs(seed, n=9, c=6, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.normal(size=(n, c))).astype(np.float32)
    return logits, _np_softmax(logits).astype(np.float32)


@pytest.mark.parametrize("method", sorted(PAPER))
def test_ues_reproduces_the_paper(method):
    forget, retain, expected = PAPER[method]
    got = um.ues(BEFORE[0], forget, BEFORE[1], retain)
    assert round(got, 4) == expected
    # A ratio: fractions give the same score as percentages.
    np.testing.assert_allclose(um.ues(0.8085, forget / 100, 0.8712, retain / 100), got, rtol=1e-12)


def test_ues_alpha_and_zero_before_accuracy():
    assert um.ues(0.8, 0.0, 0.9, 0.9, alpha=1.0) == 1.0
    assert um.ues(0.8, 0.8, 0.9, 0.0, alpha=0.0) == -1.0
    with pytest.raises(ValueError, match="undefined"):
        um.ues(0.0, 0.0, 0.9, 0.9)
    with pytest.raises(ValueError, match="undefined"):
        um.ues(0.8, 0.1, 0.0, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_logits_is_scaled_cosine(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(5, 8)).astype(np.float32)
    centres = (rng.normal(size=(7, 8)) * rng.uniform(0.1, 10, size=(7, 1))).astype(np.float32)
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    want = 64.0 * unit @ (centres / np.linalg.norm(centres, axis=-1, keepdims=True)).T
    got = um.class_logits(unit, centres, scale=64.0)
    chex.assert_shape(got, (5, 7))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(um.class_logits(emb * 3.0, centres, scale=64.0), got, atol=1e-4)


def test_accuracy_by_hand():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    assert float(um.accuracy(logits, np.array([1, 0, 0, 1]))) == 0.5
    assert float(um.accuracy(logits, np.array([1, 0, 1, 0]))) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probability_metrics_match_numpy(seed):
    _, p = _probs(seed)
    _, q = _probs(seed + 10)
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    np.testing.assert_allclose(um.confidence(p), p64.max(-1).mean(), **TOL)
    np.testing.assert_allclose(um.entropy(p), np.mean(-np.sum(p64 * np.log(p64), -1)), **TOL)
    np.testing.assert_allclose(
        um.activation_distance(p, q), np.linalg.norm(p64 - q64, axis=-1).mean(), **TOL
    )
    np.testing.assert_allclose(
        um.membership_recall(p, threshold=0.5), np.mean(p64.max(-1) > 0.5), **TOL
    )
    assert float(um.activation_distance(p, p)) == 0.0


def test_entropy_and_confidence_extremes():
    one_hot = np.eye(4, dtype=np.float32)
    assert float(um.entropy(one_hot)) == 0.0  # 0 log 0 = 0, not NaN
    assert float(um.confidence(one_hot)) == 1.0
    uniform = np.full((3, 4), 0.25, np.float32)
    np.testing.assert_allclose(um.entropy(uniform), np.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(um.confidence(uniform), 0.25)


def test_membership_recall_by_hand():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.3, 0.7], [0.45, 0.55]], np.float32)
    assert float(um.membership_recall(probs)) == 0.75  # 0.5 itself is not above the threshold
    assert float(um.membership_recall(probs, threshold=0.6)) == 0.5


def test_layer_distance_by_hand():
    before = {
        "dense": {"kernel": np.array([[1.0, 2.0], [3.0, 4.0]]), "bias": np.zeros(3)},
        "scale": np.array(2.0),
    }
    after = {
        "dense": {"kernel": np.array([[1.0, 2.0], [0.0, 0.0]]), "bias": np.ones(3)},
        "scale": np.array(-1.0),
    }
    # Norms of the differences: kernel sqrt(9 + 16) = 5, bias sqrt(3), scale 3.
    np.testing.assert_allclose(um.layer_distance(before, after), (5 + np.sqrt(3) + 3) / 3, **TOL)
    assert float(um.layer_distance(before, before)) == 0.0
    with pytest.raises(ValueError):
        um.layer_distance(before, {"dense": after["dense"]})


def test_completeness_by_hand():
    logits = np.array([[5.0, 4.0, 3.0, 0.0, -1.0]], np.float32)
    assert float(um.completeness(logits, logits)) == 1.0
    shifted = np.array([[0.0, 4.0, 3.0, 5.0, -1.0]], np.float32)  # {0,1,2} -> {1,2,3}
    np.testing.assert_allclose(um.completeness(logits, shifted), 2 / 4)
    disjoint = np.array([[0.0, 0.0, 0.0, 5.0, 4.0]], np.float32)  # top-2 {3,4} vs {0,1}
    assert float(um.completeness(logits, disjoint, k=2)) == 0.0
    both = np.concatenate([logits, logits])
    np.testing.assert_allclose(um.completeness(both, np.concatenate([logits, shifted])), 0.75)


def test_completeness_clips_k_to_the_number_of_classes():
    two = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    assert float(um.completeness(two, -two, k=3)) == 1.0


def test_completeness_is_one_for_identical_random_logits():
    logits, _ = _probs(4, n=20, c=10)
    assert float(um.completeness(logits, logits, k=3)) == 1.0


def test_summary():
    rng = np.random.default_rng(0)
    n_classes = 6
    f_labels = rng.integers(0, n_classes, 10)
    r_labels = rng.integers(0, n_classes, 12)
    # A teacher that is right on every sample; a student that forgot the forget set.
    f_before = 20.0 * np.eye(n_classes, dtype=np.float32)[f_labels]
    r_before = 20.0 * np.eye(n_classes, dtype=np.float32)[r_labels]
    f_after = rng.normal(size=(10, n_classes)).astype(np.float32)
    f_after[np.arange(10), f_labels] = -5.0
    out = um.unlearning_summary(f_before, f_after, r_before, r_before, f_labels, r_labels)
    assert set(out) == {
        "forget_acc_before",
        "forget_acc_after",
        "retain_acc_before",
        "retain_acc_after",
        "ues",
        "conf_drop_forget",
        "conf_drop_retain",
        "entropy_increase_forget",
        "entropy_increase_retain",
        "activation_distance",
        "completeness",
        "membership_recall_before",
        "membership_recall_after",
    }
    assert all(isinstance(v, float) for v in out.values())
    assert out["forget_acc_before"] == 1.0 and out["forget_acc_after"] == 0.0
    assert out["retain_acc_before"] == out["retain_acc_after"] == 1.0
    np.testing.assert_allclose(out["ues"], 0.5)
    assert out["conf_drop_retain"] == 0.0 and out["entropy_increase_retain"] == 0.0
    assert out["conf_drop_forget"] > 0.0 and out["entropy_increase_forget"] > 0.0
    assert out["activation_distance"] > 0.0
    assert out["membership_recall_before"] == 1.0
    p_after = _np_softmax(f_after)
    np.testing.assert_allclose(out["membership_recall_after"], np.mean(p_after.max(-1) > 0.5))
    # Identity: nothing changed, nothing forgotten.
    same = um.unlearning_summary(f_before, f_before, r_before, r_before, f_labels, r_labels)
    assert same["ues"] == 0.0 and same["completeness"] == 1.0
    assert same["activation_distance"] == 0.0 and same["conf_drop_forget"] == 0.0


def test_summary_ues_is_nan_when_undefined():
    logits = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    out = um.unlearning_summary(logits, logits, logits, logits, np.array([1, 1]), np.array([0, 0]))
    assert out["forget_acc_before"] == 0.0 and math.isnan(out["ues"])


class MetricsVariantsTest(chex.TestCase):
    """The array metrics are jittable and agree with their eager values."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit(self):
        logits, p = _probs(1)
        labels = np.argmax(logits, -1)
        q = _probs(2)[1]
        metrics = {
            "acc": self.variant(um.accuracy)(logits, labels),
            "conf": self.variant(um.confidence)(p),
            "ent": self.variant(um.entropy)(p),
            "act": self.variant(um.activation_distance)(p, q),
            "comp": self.variant(functools.partial(um.completeness, k=3))(logits, logits),
            "mem": self.variant(functools.partial(um.membership_recall, threshold=0.5))(p),
            "logits": self.variant(functools.partial(um.class_logits, scale=2.0))(p, q),
            "layer": self.variant(um.layer_distance)({"a": jnp.asarray(p)}, {"a": q}),
        }
        chex.assert_tree_all_finite(metrics)
        assert float(metrics["acc"]) == 1.0 and float(metrics["comp"]) == 1.0
        np.testing.assert_allclose(metrics["layer"], np.linalg.norm(p - q), rtol=1e-5)
        np.testing.assert_allclose(metrics["ent"], jax.device_get(um.entropy(p)), rtol=1e-6)
