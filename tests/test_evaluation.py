"""Evaluation from embeddings: the flip test sums raw embeddings before normalising."""

import dataclasses

import numpy as np
import pytest

from cure_jax.evaluation import others_pairs, verification_metrics, verification_subset
from cure_jax.metrics.verification import verify
from data_pipelines.datasets import Verification, balanced_folds
from data_pipelines.pipelines import ArraySource


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flip_test_sums_raw_embeddings_then_normalises():
    rng = np.random.default_rng(0)
    issame = np.arange(200) % 2 == 0
    verification = Verification(None, np.arange(200), 200 + np.arange(200), issame,
                                balanced_folds(issame))
    identity = rng.normal(size=(200, 8))
    plain = np.concatenate([identity, identity]) + rng.normal(size=(400, 8))
    plain[200:][~issame] = rng.normal(size=((~issame).sum(), 8))
    # Mirrored views of very different norms: summing raw views and averaging unit views differ.
    flipped = 5.0 * np.abs(rng.normal(size=(400, 1))) * (plain + rng.normal(size=(400, 8)))
    metrics = verification_metrics(plain.astype(np.float32), flipped.astype(np.float32),
                                   verification)

    def expected(unit):
        dist = np.sum((unit[:200] - unit[200:]) ** 2, axis=1)
        return verify(dist, issame, folds_P=verification.folds)

    summed = expected(_unit(plain + flipped))
    assert metrics["verification_accuracy"] == pytest.approx(summed.accuracy, abs=1e-9)
    assert metrics["tar_at_far_1e-3"] == pytest.approx(summed.tar_at_far, abs=1e-9)
    assert metrics["verification_pairs"] == 200
    averaged = expected(_unit(_unit(plain) + _unit(flipped)))
    assert averaged.accuracy != pytest.approx(summed.accuracy, abs=1e-9)  # the test can tell
    without_flip = verification_metrics(plain.astype(np.float32), None, verification)
    assert without_flip["verification_accuracy"] == pytest.approx(
        expected(_unit(plain)).accuracy, abs=1e-9)


def test_others_verification_leaves_out_every_pair_of_a_forgotten_person():
    # Four people, two images each; pairs: each person with itself, and A-B, C-D across.
    source = ArraySource(np.zeros((8, 1, 1, 3), np.uint8), np.repeat(np.arange(4), 2))
    idx_a = np.array([0, 2, 4, 6, 0, 4])
    idx_b = np.array([1, 3, 5, 7, 2, 6])
    issame = np.array([True, True, True, True, False, False])
    verification = Verification(source, idx_a, idx_b, issame, np.arange(6) % 2,
                                names=("Ann", "Bob", "Cid", "Dee"))
    keep = others_pairs(verification, ["Bob"])
    np.testing.assert_array_equal(keep, [True, False, True, True, False, True])
    subset = verification_subset(verification, keep)
    np.testing.assert_array_equal(subset.idx_a, [0, 4, 6, 4])
    np.testing.assert_array_equal(subset.folds, [0, 0, 1, 1])
    assert others_pairs(dataclasses.replace(verification, names=None), ["Bob"]) is None
    # Without explicit folds, each pair keeps the contiguous fold it had among all pairs.
    contiguous = verification_subset(dataclasses.replace(verification, folds=None), keep)
    np.testing.assert_array_equal(contiguous.folds, np.arange(6)[keep] * 10 // 6)


def test_others_verification_measures_what_the_forgotten_pairs_hide():
    # A student that scatters one person's images fails that person's pairs only: its
    # verification falls, its verification on the others' pairs does not.
    rng = np.random.default_rng(0)
    people = 40
    labels = np.repeat(np.arange(people), 2)
    centres = rng.normal(size=(people, 16))
    teacher = centres[labels] + 0.1 * rng.normal(size=(2 * people, 16))
    idx_a = np.concatenate([2 * np.arange(people), 2 * np.arange(people)])
    idx_b = np.concatenate([2 * np.arange(people) + 1, (2 * np.arange(people) + 2) % (2 * people)])
    issame = np.arange(2 * people) < people
    folds = np.concatenate([np.arange(people) // (people // 10)] * 2) % 10
    verification = Verification(ArraySource(np.zeros((2 * people, 1, 1, 3), np.uint8), labels),
                                idx_a, idx_b, issame, folds,
                                names=tuple(f"p{i}" for i in range(people)))
    forgotten = [f"p{i}" for i in range(0, people, 4)]
    student = teacher.copy()
    scattered = np.isin(labels, np.arange(0, people, 4))
    student[scattered] = rng.normal(size=(scattered.sum(), 16))
    others = verification_subset(verification, others_pairs(verification, forgotten))

    def accuracy(emb, pairs):
        return verification_metrics(emb.astype(np.float32), None, pairs)["verification_accuracy"]

    assert accuracy(student, verification) < accuracy(teacher, verification) - 0.05
    assert accuracy(student, others) == accuracy(teacher, others)
