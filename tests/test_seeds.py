"""Several seeds: parsing, folders, and the mean and spread of their metrics."""

import math
import pathlib

import numpy as np
import pytest

from cure_jax import config as config_lib
from cure_jax import seeds


def test_parse_seeds_reads_a_list_and_refuses_bad_ones():
    assert seeds.parse_seeds(None) is None
    assert seeds.parse_seeds("0,1,2") == (0, 1, 2)
    assert seeds.parse_seeds(" 3 , 7 ") == (3, 7)
    for bad in ("", "a,b", "0,0", "-1", "1.5"):
        with pytest.raises(ValueError, match="--seeds"):
            seeds.parse_seeds(bad)


def test_seed_folder_keeps_single_seed_runs_where_they_were():
    workdir = pathlib.Path("runs/default")
    assert seeds.seed_folder(workdir, None) == workdir
    assert seeds.seed_folder(workdir, 2) == workdir / "seed2"


def test_with_seed_sets_the_request_seed_only():
    config = config_lib.Config()
    seeded = seeds.with_seed(config, 5)
    assert seeded.unlearn.seed == 5
    assert config_lib.differences(config, seeded) == ["unlearn.seed"]


def test_spread_is_the_mean_and_sample_standard_deviation():
    values = [0.2, 0.25, 0.3, 0.45]
    result = seeds.spread(values)
    mean = sum(values) / len(values)
    sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    assert result.mean == pytest.approx(mean)
    assert result.std == pytest.approx(sample_std)
    assert result.values == tuple(values)
    assert seeds.spread([0.7]).std == 0.0
    with_nan = seeds.spread([0.1, math.nan, 0.3])
    assert with_nan.mean == pytest.approx(0.2) and with_nan.std == pytest.approx(np.std([0.1, 0.3],
                                                                                       ddof=1))


def test_aggregate_spreads_measurements_and_keeps_what_describes_the_run():
    runs = [{"method": "cure", "ues": 0.30, "retain_acc_after": 0.7, "head_scored": 1.0,
             "forget_images": 640, "only_here": 1.0},
            {"method": "cure", "ues": 0.26, "retain_acc_after": 0.7, "head_scored": 1.0,
             "forget_images": 640}]
    merged = seeds.aggregate(runs)
    assert merged["method"] == "cure" and merged["head_scored"] == 1.0
    assert isinstance(merged["ues"], seeds.Spread)
    assert merged["ues"].mean == pytest.approx(0.28)
    # A measurement on which the seeds agree still reads mean ± std.
    assert merged["retain_acc_after"] == seeds.Spread(0.7, 0.0, (0.7, 0.7))
    assert isinstance(merged["forget_images"], seeds.Spread)
    assert "only_here" not in merged
    assert seeds.to_json(merged)["ues"]["std"] == pytest.approx(merged["ues"].std)
    files = seeds.aggregate([{"student_file": "seed0/cure/student.onnx"},
                             {"student_file": "seed1/cure/student.onnx"}])
    assert files["student_file"] == ["seed0/cure/student.onnx", "seed1/cure/student.onnx"]
    with pytest.raises(ValueError, match="method"):
        seeds.aggregate([{"method": "cure"}, {"method": "dispersion"}])
    with pytest.raises(ValueError):
        seeds.aggregate([])


def test_spread_prints_mean_and_std():
    assert str(seeds.Spread(0.5, 0.25, (0.25, 0.75))) == "0.5 ± 0.25"
    assert str(seeds.Spread(640.0, 0.0, (640.0, 640.0))) == "640"
    assert seeds.mean_of(seeds.Spread(1.0, 2.0, ())) == 1.0 and seeds.mean_of(3.0) == 3.0
    assert seeds.std_of(seeds.Spread(1.0, 2.0, ())) == 2.0 and seeds.std_of(3.0) == 0.0


def test_paired_difference_removes_what_the_requests_share():
    hard_easy = [0.10, 0.30, 0.50]  # requests of very different difficulty
    better = [v + 0.02 for v in hard_easy]
    change = seeds.paired_difference(better, hard_easy)
    assert change.mean == pytest.approx(0.02) and change.std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        seeds.paired_difference([0.1], [0.1, 0.2])


def test_note_speaks_of_a_spread_only_over_several_seeds():
    assert "mean ± sample standard deviation over 3 seeds" in seeds.note((0, 1, 2))
    one = seeds.note((0,))
    assert "One seed" in one and "±" not in one
