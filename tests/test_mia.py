"""Membership inference attack: chance on indistinguishable groups, high on separable ones."""

import numpy as np
import pytest

from cure_jax.metrics.mia import attack_accuracy, attack_features


def test_features_match_a_direct_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)) * 3
    labels = rng.integers(0, 4, 6)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = np.stack([-np.log(p[np.arange(6), labels]), p.max(-1),
                         -(p * np.log(p)).sum(-1)], -1)
    np.testing.assert_allclose(attack_features(logits, labels), expected, rtol=1e-10)


def test_attack_is_at_chance_on_one_distribution_and_high_on_two():
    rng = np.random.default_rng(0)
    same = attack_accuracy(rng.normal(size=(300, 3)), rng.normal(size=(500, 3)))
    assert abs(same - 0.5) < 0.08
    # Members have a lower loss: the attack sees it.
    members = rng.normal(size=(300, 3)) - np.array([2.0, 0, 0])
    assert attack_accuracy(members, rng.normal(size=(500, 3))) > 0.8


def test_too_few_samples_is_an_error():
    with pytest.raises(ValueError, match="at least 5 samples"):
        attack_accuracy(np.zeros((3, 3)), np.zeros((10, 3)))
