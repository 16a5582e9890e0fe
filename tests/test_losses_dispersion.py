"""Tests of the dispersion losses against direct NumPy formulas, and their edge cases."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cure_jax.losses import dispersion

D = 6
SEEDS = (0, 1, 2, 3)
TOL = dict(rtol=1e-5, atol=1e-6)
LOSSES = {
    "mean": dispersion.mean_dispersion_loss,
    "hard": dispersion.hard_dispersion_loss,
    "unif": dispersion.uniformity_dispersion_loss,
}


# ---------------------------------------------------------------- NumPy references (float64)


def _np_pairs(emb, groups):
    z = np.asarray(emb, np.float64)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    n = len(groups)
    return [
        (i, j, float(z[i] @ z[j]))
        for i in range(n)
        for j in range(n)
        if i != j and groups[i] == groups[j]
    ]


def np_mean(emb, groups):
    pairs = _np_pairs(emb, groups)
    return np.mean([c for _, _, c in pairs]) if pairs else 0.0


def np_hard(emb, groups):
    best = {}
    for i, _, c in _np_pairs(emb, groups):
        best[i] = max(best.get(i, -np.inf), c)
    return np.mean(list(best.values())) if best else 0.0


def np_unif(emb, groups, t=2.0):
    pairs = _np_pairs(emb, groups)
    if not pairs:
        return 0.0
    a = np.array([2 * t * (c - 1) for _, _, c in pairs])
    return a.max() + np.log(np.mean(np.exp(a - a.max())))


NP_LOSSES = {"mean": np_mean, "hard": np_hard, "unif": np_unif}


def _inputs(seed, n=12, n_groups=4):
    rng = np.random.default_rng(seed)
    emb = (rng.normal(size=(n, D)) * rng.uniform(0.5, 5.0, size=(n, 1))).astype(np.float32)
    groups = rng.integers(0, n_groups, size=n).astype(np.int32)
    return emb, groups


def _pk_inputs(seed, p=4, k=3):
    """A P x K batch: every group has exactly k members, as the dispersion sampler makes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(p, 1, D))
    emb = (centres + 0.7 * rng.normal(size=(p, k, D))).reshape(p * k, D).astype(np.float32)
    groups = np.repeat(np.arange(p), k).astype(np.int32)
    perm = rng.permutation(p * k)
    return emb[perm], groups[perm]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_matches_numpy(seed, name):
    emb, groups = _inputs(seed)
    got = LOSSES[name](emb, groups)
    chex.assert_shape(got, ())
    np.testing.assert_allclose(got, NP_LOSSES[name](emb, groups), **TOL)


@pytest.mark.parametrize("t", [0.5, 2.0, 5.0])
def test_uniformity_temperature(t):
    emb, groups = _inputs(7)
    got = dispersion.uniformity_dispersion_loss(emb, groups, t=t)
    np.testing.assert_allclose(got, np_unif(emb, groups, t), **TOL)


def test_uniformity_is_stable_when_every_exp_underflows():
    # Antipodal positives: exp(2 t (cos - 1)) = exp(-4 t) is 0 in float32 for t = 200.
    emb = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], np.float32)
    groups = np.array([0, 0, 1, 1], np.int32)
    got = dispersion.uniformity_dispersion_loss(emb, groups, t=200.0)
    np.testing.assert_allclose(got, -800.0, rtol=1e-5)
    grad = jax.grad(lambda e: dispersion.uniformity_dispersion_loss(e, groups, t=200.0))(emb)
    chex.assert_tree_all_finite(grad)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_invariant_to_scale_and_permutation(seed, name):
    emb, groups = _inputs(seed)
    rng = np.random.default_rng(50 + seed)
    scaled = emb * rng.uniform(0.01, 100.0, size=(len(emb), 1)).astype(np.float32)
    perm = rng.permutation(len(emb))
    relabelled = groups + 100  # only equality of group ids matters
    base = LOSSES[name](emb, groups)
    np.testing.assert_allclose(LOSSES[name](scaled, groups), base, **TOL)
    np.testing.assert_allclose(LOSSES[name](emb[perm], groups[perm]), base, **TOL)
    np.testing.assert_allclose(LOSSES[name](emb, relabelled), base, **TOL)


@pytest.mark.parametrize("seed", range(20))
def test_hard_at_least_mean_on_pk_batches(seed):
    emb, groups = _pk_inputs(seed)
    hard = float(dispersion.hard_dispersion_loss(emb, groups))
    mean = float(dispersion.mean_dispersion_loss(emb, groups))
    assert hard >= mean - 1e-6
    # With at least two positives per anchor the maximum beats the mean strictly.
    assert hard > mean


def test_hard_can_be_below_mean_with_unequal_groups():
    # The pair mean weights a group by its number of pairs, the hard loss by its anchors: a big
    # tight group and a small spread one reverse the order. This is why the sampler is P x K.
    emb = np.array([[1.0, 0.0]] * 10 + [[1.0, 0.0], [-0.9, np.sqrt(0.19)]], np.float32)
    groups = np.array([0] * 10 + [1, 1], np.int32)
    hard = float(dispersion.hard_dispersion_loss(emb, groups))
    mean = float(dispersion.mean_dispersion_loss(emb, groups))
    np.testing.assert_allclose(hard, (10 - 1.8) / 12, rtol=1e-5)
    np.testing.assert_allclose(mean, (90 - 1.8) / 92, rtol=1e-5)
    assert hard < mean


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_singletons_and_masked_rows_contribute_nothing(name):
    emb, groups = _pk_inputs(0)
    rng = np.random.default_rng(9)
    base = LOSSES[name](emb, groups)
    # Singleton groups: new ids that occur once.
    extra = rng.normal(size=(3, D)).astype(np.float32)
    with_singletons = LOSSES[name](
        np.concatenate([emb, extra]), np.concatenate([groups, np.array([90, 91, 92], np.int32)])
    )
    np.testing.assert_allclose(with_singletons, base, **TOL)
    # Masked rows sharing a real group's id, including a NaN one and an all-zero one.
    junk = rng.normal(size=(3, D)).astype(np.float32)
    junk[1] = np.nan
    junk[2] = 0.0
    mask = np.array([1.0] * len(emb) + [0.0] * 3, np.float32)
    padded = LOSSES[name](
        np.concatenate([emb, junk]), np.concatenate([groups, groups[:3]]), mask=mask
    )
    np.testing.assert_allclose(padded, base, **TOL)
    # A group left with one real member once its partners are masked: no pairs from it.
    two = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, 2.0]], np.float32)
    got = LOSSES[name](two, np.array([0, 0, 1, 1], np.int32), mask=np.array([1, 1, 1, 0]))
    np.testing.assert_allclose(got, NP_LOSSES[name](two[:2], [0, 0]), **TOL)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("case", ["distinct_groups", "fully_masked", "single_sample"])
def test_no_pair_gives_zero_with_zero_gradient(name, case):
    emb, _ = _inputs(1, n=5)
    groups = np.arange(5, dtype=np.int32)
    mask = None
    if case == "fully_masked":
        groups = np.zeros(5, np.int32)
        mask = np.zeros(5, bool)
    elif case == "single_sample":
        emb, groups = emb[:1], groups[:1]

    def loss(e):
        return LOSSES[name](e, groups, mask=mask)

    value, grad = jax.value_and_grad(loss)(emb)
    assert float(value) == 0.0
    chex.assert_tree_all_finite(grad)
    assert not np.any(grad)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        emb, groups = _inputs(11)
        emb = jnp.asarray(emb, jnp.float64)
        mask = jnp.asarray(np.arange(len(groups)) != 4)

        def loss(e):
            return LOSSES[name](e, jnp.asarray(groups), mask=mask)

        assert emb.dtype == jnp.float64
        check_grads(loss, (emb,), order=1, modes=("rev",))
        assert np.any(jax.grad(loss)(emb) != 0.0)


class DispersionVariantsTest(chex.TestCase):
    """Same values eagerly and under jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit(self):
        emb, groups = _inputs(2)
        mask = np.ones(len(groups), bool)
        for name, fn in LOSSES.items():
            got = self.variant(fn)(emb, groups, mask=mask)
            np.testing.assert_allclose(got, NP_LOSSES[name](emb, groups), **TOL)
