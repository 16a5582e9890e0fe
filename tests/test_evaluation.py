"""Evaluation from embeddings: the flip test sums raw embeddings before normalising."""

import numpy as np
import pytest

from cure_jax.evaluation import verification_metrics
from cure_jax.metrics.verification import verify
from data_pipelines.datasets import Verification, balanced_folds


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
