"""tools/quality_validate.py with another model than the run's teacher (`--model`): a tiny
SFace-like ONNX graph on a tiny synthetic run, its 16x16 input resized from the run's renders."""

import json

import numpy as np
import pytest

from cure_jax import config as config_lib
from tests import onnx_graphs
from tools import quality_validate

onnx = pytest.importorskip("onnx", reason="the onnx package is needed to write the test graph")


def test_a_pretrained_file_is_validated_on_resized_renders(tmp_path):
    config = config_lib.load_config("smoke")  # 32x32 renders; no teacher is trained
    config_lib.write_config(config, tmp_path / "config.json")
    onnx.save(onnx_graphs.tiny_recognizer(), tmp_path / "tiny.onnx")
    assert quality_validate.main([
        "--workdir", str(tmp_path), "--model", str(tmp_path / "tiny.onnx"), "--max-images", "8",
        "--people", "2", "--passes", "2", "--batch-size", "8",
        "--only", "serfiq,grafiqs@image,grafiqs@stage2,norm",
        "--rank-mean", "grafiqs@image,norm", "--rank-mean", "serfiq,norm"]) == 0
    summary = json.loads((tmp_path / "quality_validation_tiny.json").read_text())
    assert summary["model"]["input_size"] == onnx_graphs.SIZE
    assert summary["rendered_size"] == config.data.image_size
    assert summary["utility_vs_quality"] == {} and "class centres" in summary["utility_skipped"]
    assert "no stages" in summary["skipped_scores"]["grafiqs@stage2"]
    assert set(summary["scores"]) == {"serfiq", "grafiqs@image", "norm"}
    for result in summary["scores"].values():
        assert set(result["spearman"]) == {"train", "holdout", "unseen_people",
                                           "holdout_uniform", "unseen_uniform"}
        assert result["spearman_with_utility"] == {}
    assert [fused["scores"] for fused in summary["rank_means"]] == [["grafiqs@image", "norm"],
                                                                    ["serfiq", "norm"]]
    assert set(summary["rank_means"][0]["spearman"]) == set(summary["scores"]["norm"]["spearman"])
    assert 0.0 <= summary["model"]["synthetic_verification"]["verification_accuracy"] <= 1.0
    assert (tmp_path / "quality_validation_tiny.png").exists()
    assert not (tmp_path / "quality_validation.json").exists()  # the teacher's file is not touched


def test_a_run_folder_without_an_exported_teacher_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no exported teacher"):
        quality_validate.load_model(str(tmp_path))


def test_a_rank_mean_of_scores_that_see_different_degradations_follows_both():
    # The level is the sum of two independent degradations; each score sees one of them.
    rng = np.random.default_rng(0)
    blur, noise = rng.uniform(size=(2, 500))
    sets = {"uniform": quality_validate.ValidationSet(source=None, degradation=blur + noise,
                                                      labels=None)}
    values = {"sees_blur": {"uniform": -blur}, "sees_noise": {"uniform": -noise}}
    fused = quality_validate.rank_mean(values, ["sees_blur", "sees_noise"], sets, utility={})
    single = quality_validate.rank_mean(values, ["sees_blur", "sees_blur"], sets, utility={})
    assert single["spearman"]["uniform"] == pytest.approx(0.69, abs=0.05)
    assert fused["spearman"]["uniform"] > 0.95
    assert fused["spearman_with_utility"] == {}


def test_a_rank_mean_of_scores_not_run_is_refused(tmp_path):
    config_lib.write_config(config_lib.load_config("smoke"), tmp_path / "config.json")
    with pytest.raises(SystemExit, match="--rank-mean needs two or more"):
        quality_validate.main(["--workdir", str(tmp_path), "--model", "none.onnx",
                               "--only", "norm", "--rank-mean", "norm,serfiq"])


def test_a_rank_mean_takes_a_score_saved_by_an_earlier_run_on_the_same_sets(tmp_path):
    config_lib.write_config(config_lib.load_config("smoke"), tmp_path / "config.json")
    onnx.save(onnx_graphs.tiny_recognizer(), tmp_path / "tiny.onnx")
    common = ["--workdir", str(tmp_path), "--model", str(tmp_path / "tiny.onnx"),
              "--max-images", "8", "--people", "2", "--passes", "2", "--batch-size", "8"]
    assert quality_validate.main([*common, "--only", "serfiq"]) == 0
    saved = tmp_path / "quality_validation_tiny.npz"
    with np.load(saved) as arrays:
        serfiq = {key: arrays[key] for key in arrays.files}
    assert set(serfiq) == {f"{split}/{name}" for split in ("train", "holdout", "unseen_people",
                                                           "holdout_uniform", "unseen_uniform")
                           for name in ("serfiq", "degradation")}
    out = tmp_path / "second"
    entry = f"{saved}:serfiq"
    assert quality_validate.main([*common, "--only", "norm", "--out", str(out),
                                  "--rank-mean", f"norm,{entry}"]) == 0
    summary = json.loads((out / "quality_validation_tiny.json").read_text())
    assert summary["rank_means"][0]["scores"] == ["norm", entry]
    with np.load(out / "quality_validation_tiny.npz") as arrays:
        norm = {key: arrays[key] for key in arrays.files}
    sets = {split: quality_validate.ValidationSet(None, norm[f"{split}/degradation"], None)
            for split in summary["counts"]}
    values = {"norm": {split: norm[f"{split}/norm"] for split in sets},
              "serfiq": {split: serfiq[f"{split}/serfiq"] for split in sets}}
    expected = quality_validate.rank_mean(values, ["norm", "serfiq"], sets, utility={})
    assert summary["rank_means"][0]["spearman"] == pytest.approx(expected["spearman"])
    # Saved on other images (another seed draws other sets): refused before any scoring.
    with pytest.raises(SystemExit, match="other train images"):
        quality_validate.main([*common, "--only", "norm", "--out", str(out), "--seed", "1",
                               "--rank-mean", f"norm,{entry}"])
    with pytest.raises(SystemExit, match="no score 'grafiqs@image'"):
        quality_validate.main([*common, "--only", "norm", "--out", str(out),
                               "--rank-mean", f"norm,{saved}:grafiqs@image"])
