"""Quality-aware unlearning: which images are forgotten, the pair subsets, and the command end to
end on the smoke config (resumed and reused)."""

import json

import numpy as np
import pytest

from cure_jax import evaluation, quality_stage, quality_unlearn
from data_pipelines.datasets import Verification


def test_low_quality_rows_are_those_below_the_percentile_and_random_ones_as_many():
    scores = np.random.default_rng(0).normal(size=200)
    low = quality_stage.forget_rows(scores, "low_quality", percentile=35.0, seed=0)
    assert len(low) == 70
    assert np.max(scores[low]) < np.min(np.delete(scores, low))
    random0 = quality_stage.forget_rows(scores, "random", percentile=35.0, seed=0)
    assert len(random0) == 70 and len(np.unique(random0)) == 70
    np.testing.assert_array_equal(
        random0, quality_stage.forget_rows(scores, "random", percentile=35.0, seed=0))
    assert not np.array_equal(
        random0, quality_stage.forget_rows(scores, "random", percentile=35.0, seed=1))
    with pytest.raises(ValueError, match="valid: low_quality, random"):
        quality_stage.forget_rows(scores, "best", percentile=35.0, seed=0)


def _verification(num_images=40, num_pairs=200, seed=0):
    rng = np.random.default_rng(seed)
    idx_a = rng.integers(0, num_images, num_pairs)
    idx_b = rng.integers(0, num_images, num_pairs)
    issame = np.arange(num_pairs) % 2 == 0
    folds = (np.arange(num_pairs) // 2) % 10  # a same and a different pair in turn
    return Verification(None, idx_a, idx_b, issame, folds)


def test_pair_subsets_split_by_the_lower_quality_and_the_worse_degradation():
    verification = _verification()
    quality = np.linspace(0, 1, 40)
    degradation = np.linspace(1, 0, 40) ** 2
    subsets = quality_stage.pair_subsets(verification, quality, degradation)
    assert set(subsets) == {"", "_low_quality", "_high_quality", "_degraded", "_clean"}
    low, high = subsets["_low_quality"], subsets["_high_quality"]
    assert np.all(low ^ high)
    pair_quality = np.minimum(quality[verification.idx_a], quality[verification.idx_b])
    assert np.max(pair_quality[low]) <= np.min(pair_quality[high])
    assert np.all(subsets["_degraded"] ^ subsets["_clean"])
    assert set(quality_stage.pair_subsets(verification, quality)) == {
        "", "_low_quality", "_high_quality"}


def test_all_pairs_agree_with_the_evaluator():
    verification = _verification()
    rng = np.random.default_rng(1)
    plain, mirrored = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    subsets = quality_stage.pair_subsets(verification, rng.random(40))
    ours = quality_stage.subset_verification(plain, mirrored, verification, subsets)
    theirs = evaluation.verification_metrics(plain, mirrored, verification)
    assert ours["verification_accuracy"] == theirs["verification_accuracy"]
    assert ours["tar_at_far_1e_3"] == theirs["tar_at_far_1e-3"]
    assert 0 <= ours["verification_accuracy_low_quality"] <= 1


def test_a_percentile_out_of_range_is_refused_before_work(tmp_path, capsys):
    status = quality_unlearn.main(["--config", "smoke", "--workdir", str(tmp_path / "run"),
                                   "--set", "quality.percentile=0"])
    assert status == 2
    assert "quality.percentile" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_quality_unlearning_end_to_end_on_smoke(tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["--config", "smoke", "--workdir", str(workdir), "--seeds", "0,1",
            "--set", "quality.steps=4"]
    assert quality_unlearn.main(argv) == 0
    payload = json.loads((workdir / "quality" / "quality_unlearning.json").read_text())
    train_images = 64  # 8 people x 10 images, 20% held out
    low = payload["low_quality"]
    assert low["images_forgotten"]["mean"] == int(np.sum(
        np.arange(train_images) < np.percentile(np.arange(train_images), 35)))
    assert payload["random"]["images_forgotten"] == low["images_forgotten"]
    assert len(payload["per_seed"]["low_quality"]) == 2
    for key in ("verification_accuracy", "verification_accuracy_low_quality",
                "verification_accuracy_high_quality", "verification_accuracy_degraded",
                "holdout_accuracy", "forgotten_accuracy", "forgotten_degradation"):
        assert key in low, key
    assert -1 <= payload["score_spearman_train"] <= 1
    report = (workdir / "quality" / "quality_unlearning.md").read_text()
    assert "forget the low-quality images" in report and "±" in report
    assert (workdir / "quality" / "quality_unlearning.png").stat().st_size > 0
    capsys.readouterr()
    assert quality_unlearn.main(argv) == 0  # every run finished: reused, not rerun
    assert capsys.readouterr().out.count("finished earlier") == 4
