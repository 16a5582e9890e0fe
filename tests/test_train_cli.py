"""End to end: the CLI on the smoke config, resume after a kill, bad input."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from cure_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_cli(args, *, crash_at_step: int = 0):
    """`python -m cure_jax.train ARGS` in a fresh process; killed after `crash_at_step`."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = ["-m", "cure_jax.train"]
    if crash_at_step:
        command = ["-m", "tests.crash_cli", str(crash_at_step), "cure_jax.train"]
    return subprocess.run([sys.executable, *command, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def _last_metrics(workdir):
    lines = (workdir / "teacher" / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]), len(lines)


@pytest.mark.slow
def test_teacher_resumes_after_a_kill_with_the_same_result(tmp_path):
    common = ["--config", "smoke", "--stage", "teacher"]
    straight = tmp_path / "straight"
    out = _run_cli([*common, "--workdir", str(straight)])
    assert out.returncode == 0, out.stderr

    crashed = tmp_path / "crashed"
    out = _run_cli([*common, "--workdir", str(crashed)], crash_at_step=7)
    assert out.returncode == 75, out.stderr  # killed mid-run, after the step-4 checkpoint
    assert not (crashed / "teacher" / "eval.json").exists()
    out = _run_cli([*common, "--workdir", str(crashed)])
    assert out.returncode == 0, out.stderr
    assert "resuming from step 4" in out.stdout

    (a, lines_a), (b, lines_b) = _last_metrics(straight), _last_metrics(crashed)
    assert lines_a == lines_b  # the replayed interval replaced the lines written before the kill
    for key in ("step", "loss", "accuracy"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    eval_a = json.loads((straight / "teacher" / "eval.json").read_text())
    eval_b = json.loads((crashed / "teacher" / "eval.json").read_text())
    for key in ("holdout_accuracy", "verification_accuracy"):
        assert eval_a[key] == pytest.approx(eval_b[key], abs=1e-6), key


@pytest.mark.slow
def test_in_process_run_writes_config_metrics_and_eval(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert train.main(["--config", "smoke", "--stage", "teacher", "--workdir", str(workdir)]) == 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["name"] == "smoke"
    evaluation = json.loads((workdir / "teacher" / "eval.json").read_text())
    assert 0.0 <= evaluation["verification_accuracy"] <= 1.0
    assert "teacher:" in capsys.readouterr().out
    # The same command again reuses the finished teacher; a different config is refused.
    assert train.main(["--config", "smoke", "--stage", "teacher", "--workdir", str(workdir)]) == 0
    code = train.main(["--config", "smoke", "--stage", "teacher", "--workdir", str(workdir),
                       "--set", "teacher.lr=0.5"])
    assert code == 1
    assert "teacher.lr" in capsys.readouterr().err


def test_nan_loss_stops_and_names_the_step(tmp_path, capsys):
    code = train.main(["--config", "smoke", "--stage", "teacher", "--workdir",
                       str(tmp_path / "nan"), "--set", "teacher.lr=1e30"])
    assert code == 1
    err = capsys.readouterr().err
    assert re.search(r"loss became (nan|-?inf) at step \d+", err), err
    assert "checkpoint" in err


def test_unknown_key_and_missing_folder_are_clear_errors(tmp_path, capsys):
    assert train.main(["--config", "smoke", "--set", "teacher.nope=1"]) == 2
    assert "valid keys" in capsys.readouterr().err
    code = train.main(["--config", "smoke", "--workdir", str(tmp_path / "w"), "--set",
                       "data.source=folder", "--set", f"data.root={tmp_path / 'missing'}"])
    assert code == 1
    assert "missing" in capsys.readouterr().err


def _unlearn_metrics(workdir):
    return json.loads((workdir / "cure" / "metrics.json").read_text())


@pytest.mark.slow
def test_whole_job_writes_report_and_metrics(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert train.main(["--config", "smoke", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "| teacher (before) |" in out and "| cure (after) |" in out
    report = (workdir / "cure" / "report.md").read_text()
    assert "Table 1" in report and "Table 2" in report
    metrics = _unlearn_metrics(workdir)
    for key in ("forget_acc_before", "forget_acc_after", "retain_acc_after", "ues",
                "verification_before", "verification_after", "layer_distance"):
        assert key in metrics, key
    assert metrics["forget_identities"] == 2
    assert (workdir / "teacher" / "embeddings.npz").exists()
    # Another method's settings reuse the teacher; the same method with other settings is
    # refused in its folder.
    code = train.main(["--config", "smoke", "--workdir", str(workdir), "--set", "cure.margin=0.1"])
    assert code == 1
    assert "cure.margin" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("unlearn.method=nope", "unknown unlearning method 'nope'"),
    ("unlearn.forget_identities=0", "forget set is empty"),
    ("unlearn.forget_identities=8", "would cover all 8 identities"),
    ("cure.forget_clusters=50", "forget_clusters=50 is more than the 16 forget images"),
])
def test_bad_requests_fail_before_any_training(tmp_path, capsys, override, message):
    workdir = tmp_path / "bad"
    assert train.main(["--config", "smoke", "--workdir", str(workdir), "--set", override]) == 1
    assert message in capsys.readouterr().err
    assert not (workdir / "teacher").exists()


@pytest.mark.slow
def test_unlearning_resumes_after_a_kill_with_the_same_result(tmp_path):
    common = ["--config", "smoke"]
    straight = tmp_path / "straight"
    out = _run_cli([*common, "--workdir", str(straight)])
    assert out.returncode == 0, out.stderr
    crashed = tmp_path / "crashed"
    # The same finished teacher (its run folder without the unlearning): it takes no more
    # steps, so the crash step counts CURE's (checkpoint every 4).
    shutil.copytree(straight, crashed, ignore=lambda folder, names:
                    ["cure"] if pathlib.Path(folder) == straight else [])
    out = _run_cli([*common, "--workdir", str(crashed)], crash_at_step=5)
    assert out.returncode == 75, out.stderr
    out = _run_cli([*common, "--workdir", str(crashed)])
    assert out.returncode == 0, out.stderr
    assert "cure: resuming from step 4" in out.stdout
    a, b = _unlearn_metrics(straight), _unlearn_metrics(crashed)
    for key in ("forget_acc_after", "retain_acc_after", "verification_after", "layer_distance"):
        assert a[key] == pytest.approx(b[key], abs=1e-5), key


@pytest.mark.slow
def test_compare_runs_methods_on_one_teacher_and_reuses_finished_ones(tmp_path, capsys):
    from cure_jax import compare

    workdir = tmp_path / "cmp"
    args = ["--config", "smoke", "--workdir", str(workdir), "--methods", "dispersion,cure",
            "--set", "dispersion.groups_per_batch=2"]
    assert compare.main(args) == 0
    report = (workdir / "comparison.md").read_text()
    assert "| cure |" in report and "| dispersion |" in report and "Table 2" in report
    results = json.loads((workdir / "comparison.json").read_text())
    assert list(results) == ["dispersion", "cure"]
    assert (workdir / "comparison.png").stat().st_size > 0
    capsys.readouterr()
    assert compare.main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2
    assert compare.main([*args[:4], "--methods", "nope"]) == 2
    assert "valid:" in capsys.readouterr().err


def test_comparison_leaves_out_what_the_teacher_centres_cannot_score(tmp_path):
    from cure_jax.report import comparison_report, plot_comparison

    before = {"forget_acc_before": 0.9, "retain_acc_before": 0.9, "forget_map_before": 0.8,
              "retain_map_before": 0.7, "mia_before": 0.55}
    results = {
        "cure": {**before, "forget_acc_after": 0.2, "retain_acc_after": 0.7, "ues": 0.28,
                 "forget_map_after": 0.4, "retain_map_after": 0.6, "mia_after": 0.53,
                 "head_scored": 1.0},
        "retrain": {**before, "forget_map_after": 0.5, "retain_map_after": 0.65,
                    "head_scored": 0.0},
    }
    report = comparison_report(results, title="t")
    retrain_row = next(line for line in report.splitlines() if line.startswith("| retrain |"))
    assert retrain_row.split("|")[2].strip() == "-"  # forget accuracy
    assert "retrain: its own embedding space" in report
    assert "nan" not in report
    plot_comparison(results, tmp_path / "c.png", title="t")
    assert (tmp_path / "c.png").stat().st_size > 0
