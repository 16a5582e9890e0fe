"""Tests of the CURE loss terms against direct NumPy formulas, and their invariances."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cure_jax.losses import cure
from cure_jax.losses.common import l2_normalize

B, D, K_F, K_R = 7, 8, 5, 4
SEEDS = (0, 1, 2)
TOL = dict(rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- NumPy references (float64)


def _np_unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_cos(a, b):
    return np.sum(_np_unit(a) * _np_unit(b), axis=-1)


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_pl(logits, labels, temperature):
    logp = _np_log_softmax(np.asarray(logits, np.float64) / temperature)
    return -np.mean(logp[np.arange(len(labels)), labels])


def np_cosf(s, t):
    return np.mean(_np_cos(s, t))


def np_con(s, t, cent, margin, mode):
    cos_r = _np_unit(s) @ _np_unit(cent).T
    agg = cos_r.max(axis=-1) if mode == "nearest" else cos_r.mean(axis=-1)
    return np.mean(np.maximum(_np_cos(s, t) - margin, 0) + np.maximum(agg - margin, 0))


def np_cosr(s, t):
    return np.mean(1 - _np_cos(s, t))


def np_fm(s, t, on):
    s, t = (_np_unit(s), _np_unit(t)) if on == "unit" else (np.float64(s), np.float64(t))
    return np.mean(np.sum((s - t) ** 2, axis=-1) / s.shape[-1])


def np_fd(s, t, temperature):
    log_pt = _np_log_softmax(_np_unit(t) / temperature)
    log_ps = _np_log_softmax(_np_unit(s) / temperature)
    return temperature**2 * np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=-1))


# ---------------------------------------------------------------- inputs


def _inputs(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return dict(
        student_forget=rng.normal(size=(B, D)).astype(dtype) * 3.0,
        teacher_forget=rng.normal(size=(B, D)).astype(dtype) * 3.0,
        head_logits=rng.normal(size=(B, K_F)).astype(dtype) * 2.0,
        pseudo_labels=rng.integers(0, K_F, size=B).astype(np.int32),
        student_retain=rng.normal(size=(B, D)).astype(dtype) * 3.0,
        teacher_retain=rng.normal(size=(B, D)).astype(dtype) * 3.0,
        retain_centroids=rng.normal(size=(K_R, D)).astype(dtype),
    )


HYPER = dict(temperature_pl=0.5, temperature_fd=0.2, margin=0.1)


def _terms(x, *, retain_mode="nearest", on="raw", mask_f=None, mask_r=None):
    """Each loss term computed through its own function."""
    return {
        "pl": cure.pseudo_label_loss(
            x["head_logits"], x["pseudo_labels"], temperature=HYPER["temperature_pl"], mask=mask_f
        ),
        "cosf": cure.forget_cosine_loss(x["student_forget"], x["teacher_forget"], mask=mask_f),
        "con": cure.contrastive_loss(
            x["student_forget"],
            x["teacher_forget"],
            x["retain_centroids"],
            margin=HYPER["margin"],
            retain_mode=retain_mode,
            mask=mask_f,
        ),
        "cosr": cure.retain_cosine_loss(x["student_retain"], x["teacher_retain"], mask=mask_r),
        "fm": cure.feature_matching_loss(
            x["student_retain"], x["teacher_retain"], on=on, mask=mask_r
        ),
        "fd": cure.feature_distribution_loss(
            x["student_retain"],
            x["teacher_retain"],
            temperature=HYPER["temperature_fd"],
            mask=mask_r,
        ),
    }


def _np_terms(x, *, retain_mode="nearest", on="raw"):
    return {
        "pl": np_pl(x["head_logits"], x["pseudo_labels"], HYPER["temperature_pl"]),
        "cosf": np_cosf(x["student_forget"], x["teacher_forget"]),
        "con": np_con(
            x["student_forget"],
            x["teacher_forget"],
            x["retain_centroids"],
            HYPER["margin"],
            retain_mode,
        ),
        "cosr": np_cosr(x["student_retain"], x["teacher_retain"]),
        "fm": np_fm(x["student_retain"], x["teacher_retain"], on),
        "fd": np_fd(x["student_retain"], x["teacher_retain"], HYPER["temperature_fd"]),
    }


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("retain_mode", ["nearest", "mean"])
@pytest.mark.parametrize("on", ["raw", "unit"])
def test_terms_match_numpy(seed, retain_mode, on):
    x = _inputs(seed)
    got = _terms(x, retain_mode=retain_mode, on=on)
    want = _np_terms(x, retain_mode=retain_mode, on=on)
    for value in got.values():
        chex.assert_shape(value, ())
    chex.assert_trees_all_close(got, jax.tree.map(np.float32, want), **TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_cosine_terms_ignore_embedding_scale(seed):
    x = _inputs(seed)
    rng = np.random.default_rng(100 + seed)
    scaled = dict(x)
    for name in ("student_forget", "teacher_forget", "student_retain", "teacher_retain"):
        scaled[name] = x[name] * rng.uniform(0.01, 100.0, size=(B, 1)).astype(np.float32)
    scaled["retain_centroids"] = x["retain_centroids"] * rng.uniform(0.01, 100.0, size=(K_R, 1))
    names = ("cosf", "con", "cosr", "fd", "fm")  # fm only on unit embeddings
    got = {n: v for n, v in _terms(scaled, on="unit").items() if n in names}
    want = {n: v for n, v in _terms(x, on="unit").items() if n in names}
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    # Raw feature matching must see the magnitude: that is its purpose.
    assert not np.isclose(_terms(scaled)["fm"], _terms(x)["fm"])


@pytest.mark.parametrize("seed", SEEDS)
def test_terms_invariant_to_batch_permutation(seed):
    x = _inputs(seed)
    perm = np.random.default_rng(200 + seed).permutation(B)
    permuted = {n: (v if n == "retain_centroids" else v[perm]) for n, v in x.items()}
    for mode in ("nearest", "mean"):
        chex.assert_trees_all_close(
            _terms(permuted, retain_mode=mode), _terms(x, retain_mode=mode), **TOL
        )


def test_known_values():
    x = _inputs(0)
    s = x["student_retain"]
    assert float(cure.feature_matching_loss(s, s, on="raw")) == 0.0
    assert float(cure.feature_matching_loss(s, s, on="unit")) == 0.0
    assert float(cure.feature_distribution_loss(s, s, temperature=0.1)) == 0.0
    np.testing.assert_allclose(cure.retain_cosine_loss(s, 5.0 * s), 0.0, atol=1e-6)
    np.testing.assert_allclose(cure.forget_cosine_loss(s, -2.0 * s), -1.0, rtol=1e-6)
    # Every similarity below the margin: student orthogonal-ish to teacher and centroids.
    eye = np.eye(D, dtype=np.float32)
    student, teacher, centroids = eye[:3], eye[3:6], eye[6:8]
    for mode in ("nearest", "mean"):
        assert (
            float(cure.contrastive_loss(student, teacher, centroids, margin=0.05, retain_mode=mode))
            == 0.0
        )
    # Above the margin the hinge is linear: identical student and teacher cost 1 - m.
    np.testing.assert_allclose(
        cure.contrastive_loss(student, student, centroids, margin=0.25), 0.75, rtol=1e-6
    )


def test_pseudo_label_loss_is_stable_for_huge_logits():
    logits = np.array([[1e4, -1e4, 0.0]], np.float32)
    value = cure.pseudo_label_loss(logits, np.array([1]), temperature=0.1)
    np.testing.assert_allclose(value, 2e5, rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_padded_rows_do_not_change_the_value(seed):
    x = _inputs(seed)
    rng = np.random.default_rng(300 + seed)
    pad = 3
    padded = {}
    for name, value in x.items():
        if name == "retain_centroids":
            padded[name] = value
            continue
        junk = rng.normal(size=(pad,) + value.shape[1:]) * 1e3
        if name == "pseudo_labels":
            junk = rng.integers(0, K_F, size=pad)
        elif name in ("student_forget", "student_retain"):
            junk[0] = 0.0  # a padded all-zero embedding, as a zero-filled batch has
        padded[name] = np.concatenate([value, junk.astype(value.dtype)])
    mask_f = np.array([True] * B + [False] * pad)
    mask_r = mask_f.astype(np.float32)  # float masks work too
    got = _terms(padded, mask_f=mask_f, mask_r=mask_r)
    chex.assert_trees_all_close(got, _terms(x), **TOL)


def test_fully_masked_batch_gives_zero_and_zero_gradient():
    x = _inputs(0)
    mask = np.zeros(B, bool)
    got = _terms(x, mask_f=mask, mask_r=mask)
    chex.assert_trees_all_equal(got, {n: jnp.zeros(()) for n in got})

    def total(s):
        return cure.retain_cosine_loss(s, x["teacher_retain"], mask=mask)

    grad = jax.grad(total)(x["student_retain"])
    chex.assert_tree_all_finite(grad)
    assert not np.any(grad)


def _cure_total(x, weights, **kw):
    return cure.cure_loss(**x, weights=weights, **HYPER, **kw)


@pytest.mark.parametrize("seed", SEEDS)
def test_cure_loss_is_the_weighted_sum(seed):
    x = _inputs(seed)
    weights = cure.CureWeights(pl=0.3, cosf=1.5, con=2.0, cosr=0.7, fm=4, fd=0.25)
    total, terms = _cure_total(x, weights, retain_mode="mean", feature_match_on="unit")
    want = _np_terms(x, retain_mode="mean", on="unit")
    chex.assert_trees_all_close(terms, jax.tree.map(np.float32, want), **TOL)
    expected = sum(getattr(weights, n) * want[n] for n in want)
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_zero_weight_removes_a_nan_term():
    x = _inputs(0)
    poisoned = dict(x)
    poisoned["teacher_retain"] = np.full((B, D), np.nan, np.float32)
    poisoned["head_logits"] = np.full((B, K_F), np.inf, np.float32)
    weights = cure.CureWeights(pl=0, cosf=1.0, con=1.0, cosr=0, fm=0.0, fd=0.0)
    assert weights.pl == 0.0 and isinstance(weights.pl, float)

    def total(student_forget, student_retain):
        inputs = dict(poisoned, student_forget=student_forget, student_retain=student_retain)
        return _cure_total(inputs, weights)

    value, terms = total(x["student_forget"], x["student_retain"])
    assert np.isfinite(value)
    for name in ("pl", "cosr", "fm", "fd"):
        assert float(terms[name]) == 0.0
    expected = np_cosf(x["student_forget"], x["teacher_forget"]) + np_con(
        x["student_forget"], x["teacher_forget"], x["retain_centroids"], HYPER["margin"], "nearest"
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    grads = jax.grad(lambda a, b: total(a, b)[0], argnums=(0, 1))(
        x["student_forget"], x["student_retain"]
    )
    chex.assert_tree_all_finite(grads)
    # And the same poison through a nonzero weight does reach the total: the test can fail.
    assert np.isnan(_cure_total(poisoned, cure.CureWeights())[0])


def test_all_zero_weights_give_zero():
    total, terms = _cure_total(_inputs(0), cure.CureWeights(0, 0, 0, 0, 0, 0))
    assert float(total) == 0.0 and all(float(v) == 0.0 for v in terms.values())


def test_invalid_modes_raise():
    x = _inputs(0)
    with pytest.raises(ValueError, match="retain_mode"):
        cure.contrastive_loss(
            x["student_forget"],
            x["teacher_forget"],
            x["retain_centroids"],
            margin=0.1,
            retain_mode="max",
        )
    with pytest.raises(ValueError, match="on must be"):
        cure.feature_matching_loss(x["student_retain"], x["teacher_retain"], on="cosine")


def test_l2_normalize_has_finite_gradient_at_zero():
    grad = jax.jacrev(lambda v: l2_normalize(v))(jnp.zeros(D))
    chex.assert_tree_all_finite(grad)
    chex.assert_trees_all_close(l2_normalize(jnp.zeros(D)), jnp.zeros(D))


@pytest.mark.parametrize(
    "name", ["pl", "cosf", "con_nearest", "con_mean", "cosr", "fm_raw", "fm_unit", "fd"]
)
def test_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        x = {
            n: jnp.asarray(v, jnp.float64 if v.dtype.kind == "f" else v.dtype)
            for n, v in _inputs(5, np.float64).items()
        }
        labels = x["pseudo_labels"]
        fns = {
            "pl": (lambda a: cure.pseudo_label_loss(a, labels, temperature=0.5), "head_logits"),
            "cosf": (lambda s: cure.forget_cosine_loss(s, x["teacher_forget"]), "student_forget"),
            "con_nearest": (
                lambda s: cure.contrastive_loss(
                    s, x["teacher_forget"], x["retain_centroids"], margin=0.1
                ),
                "student_forget",
            ),
            "con_mean": (
                lambda s: cure.contrastive_loss(
                    s, x["teacher_forget"], x["retain_centroids"], margin=-0.1, retain_mode="mean"
                ),
                "student_forget",
            ),
            "cosr": (lambda s: cure.retain_cosine_loss(s, x["teacher_retain"]), "student_retain"),
            "fm_raw": (
                lambda s: cure.feature_matching_loss(s, x["teacher_retain"]),
                "student_retain",
            ),
            "fm_unit": (
                lambda s: cure.feature_matching_loss(s, x["teacher_retain"], on="unit"),
                "student_retain",
            ),
            "fd": (
                lambda s: cure.feature_distribution_loss(s, x["teacher_retain"], temperature=0.2),
                "student_retain",
            ),
        }
        fn, arg = fns[name]
        assert x[arg].dtype == jnp.float64
        check_grads(fn, (x[arg],), order=1, modes=("rev",))
        grad = jax.grad(fn)(x[arg])
        assert np.any(grad != 0.0)  # the term does reach its input


class CureLossVariantsTest(chex.TestCase):
    """The total is the same eagerly and under jit, with the config fields static."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_total(self):
        x = _inputs(3)
        weights = cure.CureWeights(pl=1.0, cosf=0.0, con=0.5, cosr=2.0, fm=0.0, fd=1.0)
        fn = self.variant(
            functools.partial(cure.cure_loss, weights=weights, retain_mode="mean", **HYPER)
        )
        total, terms = fn(**x)
        chex.assert_shape(total, ())
        want = _np_terms(x, retain_mode="mean")
        expected = sum(getattr(weights, n) * want[n] for n in want)
        np.testing.assert_allclose(total, expected, rtol=1e-5)
        assert set(terms) == {"pl", "cosf", "con", "cosr", "fm", "fd"}
