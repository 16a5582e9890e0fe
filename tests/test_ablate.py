"""The ablation runner: the A1-A12 table as config overrides, its folders, the paired UES change
and the report; end to end on the smoke config."""

import json

import pytest

from cure_jax import ablate, seeds
from cure_jax import config as config_lib
from cure_jax.methods.cure import weights_of


def test_every_ablation_is_valid_cure_with_one_change():
    base = config_lib.Config()
    for ablation in ablate.ABLATIONS:
        config = ablate.ablation_config(base, ablation, seed=None)
        assert config.unlearn.method == "cure"
        changed = config_lib.differences(base, config)
        assert changed and all(key.startswith("cure.") for key in changed), ablation.key
        assert len(changed) == len(ablation.overrides), ablation.key
    assert [a.key for a in ablate.ABLATIONS] == [f"A{i}" for i in range(1, 13)]


def test_term_removals_zero_exactly_their_weights():
    base = config_lib.Config()
    weights = {a.key: weights_of(ablate.ablation_config(base, a, None).cure)
               for a in ablate.ABLATIONS}
    assert weights["A1"].pl == 0 and weights["A1"].cosf == 1
    assert weights["A4"].cosr == 0 and weights["A4"].fm == 10
    assert (weights["A7"].cosr, weights["A7"].fm, weights["A7"].fd) == (0, 0, 0)
    assert weights["A7"].pl == weights["A7"].cosf == weights["A7"].con == 1


def test_select_names_the_valid_keys():
    assert ablate.select("all") == ablate.ABLATIONS
    assert [a.key for a in ablate.select("a9, A1")] == ["A1", "A9"]
    with pytest.raises(ValueError, match="valid: A1"):
        ablate.select("A13")


def test_folders_share_full_cure_with_compare(tmp_path):
    a3 = ablate.BY_KEY["A3"]
    assert ablate.ablation_folder(tmp_path, ablate.REFERENCE, None) == tmp_path / "cure"
    assert ablate.ablation_folder(tmp_path, a3, None) == tmp_path / "ablation" / "A3"
    assert ablate.ablation_folder(tmp_path, a3, 2) == tmp_path / "seed2" / "ablation" / "A3"
    planned = ablate.plan(config_lib.Config(), tmp_path, (a3,), (0, 1))
    assert [(a.key, seed) for a, seed, _ in planned] == [("CURE", 0), ("A3", 0), ("CURE", 1),
                                                        ("A3", 1)]
    assert planned[3][2].config.unlearn.seed == 1 and planned[3][2].config.cure.w_con == 0


def test_ues_change_is_paired_by_seed():
    references = [{"ues": 0.30}, {"ues": 0.20}]
    runs = [{"ues": 0.25}, {"ues": 0.15}]
    change = ablate.paired_ues_change(runs, references)
    assert change.mean == pytest.approx(-0.05) and change.std == pytest.approx(0.0, abs=1e-12)
    summary = ablate.summarize({"CURE": references, "A1": runs})
    assert summary["A1"]["ues_change"].mean == pytest.approx(-0.05)
    assert isinstance(summary["A1"]["ues"], seeds.Spread)
    single = ablate.summarize({"CURE": references[:1], "A1": runs[:1]})
    assert single["A1"]["ues_change"] == pytest.approx(-0.05)


def test_report_puts_the_papers_figures_beside_ours():
    before = {"forget_acc_before": 0.98, "retain_acc_before": 0.95, "ues_alpha": 0.5}
    summary = {"CURE": {**before, "ues": 0.3}, "A9": {**before, "ues": 0.1, "ues_change": -0.2}}
    text = ablate.ablation_report(summary, (ablate.BY_KEY["A9"],), title="t")
    row = next(line for line in text.splitlines() if line.startswith("| A9 |"))
    assert "DBSCAN" in row and "0.1428" in row and "-0.2000" in row
    assert "0.2290" in next(line for line in text.splitlines() if line.startswith("| CURE |"))


@pytest.mark.slow
def test_compare_and_ablate_over_seeds_share_full_cure_and_resume(tmp_path, capsys):
    from cure_jax import compare

    workdir = tmp_path / "abl"
    # DBSCAN on the smoke teacher's 16 forget embeddings needs a small core.
    common = ["--config", "smoke", "--workdir", str(workdir), "--set",
              "cure.dbscan_min_samples=2", "--set", "cure.dbscan_eps=0.5"]
    assert compare.main([*common, "--methods", "cure,neggrad", "--seeds", "0,1"]) == 0
    capsys.readouterr()
    # compare --seeds: a folder per seed with its own comparison, the mean ± std above them.
    for seed in (0, 1):
        for name in ("cure", "neggrad"):
            assert (workdir / f"seed{seed}" / name / "metrics.json").exists()
        assert "± " not in (workdir / f"seed{seed}" / "comparison.md").read_text()
    assert not (workdir / "cure").exists()
    report = (workdir / "comparison.md").read_text()
    assert "over 2 seeds" in report and "±" in report
    compared = json.loads((workdir / "comparison.json").read_text())
    assert compared["seeds"] == [0, 1] and list(compared["methods"]) == ["neggrad", "cure"]
    ues = compared["methods"]["cure"]["ues"]
    assert ues["values"] == [compared["per_seed"][f"seed{k}"]["cure"]["ues"] for k in (0, 1)]
    # Different seeds forget different people: the runs differ. (Not the UES itself: on the
    # smoke config CURE's is often 0.0, its 16 forget images' accuracy unmoved, on either seed.)
    per_seed = [compared["per_seed"][f"seed{k}"]["cure"] for k in (0, 1)]
    assert per_seed[0] != per_seed[1]
    args = [*common, "--ablations", "A1,A9", "--seeds", "0,1"]
    assert ablate.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 2  # full CURE of both seeds: compare's runs
    for seed in (0, 1):
        for key in ("A1", "A9"):
            assert (workdir / f"seed{seed}" / "ablation" / key / "metrics.json").exists()
    result = json.loads((workdir / "ablation.json").read_text())
    assert result["seeds"] == [0, 1] and list(result["summary"]) == ["CURE", "A1", "A9"]
    assert len(result["runs"]["A9"]) == 2
    assert "±" in (workdir / "ablation.md").read_text()
    assert (workdir / "ablation.png").stat().st_size > 0
    assert ablate.main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 6
    assert ablate.main([*common, "--ablations", "A99"]) == 2
