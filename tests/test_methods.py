"""The method interface: a new method is one module (a tiny one is written here), methods never
see the evaluator, and a finished run is invalidated only by the settings it reads."""

import ast
import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from cure_jax import config as config_lib
from cure_jax import stages
from cure_jax.methods import base, get_method
from cure_jax.methods.label_free import (
    BASELINE_READS,
    Phase,
    check_labels,
    classifier_loss,
    make_labels,
    run_phases,
)
from cure_jax.optim import sgd
from tests.contexts import tiny_context

METHODS_DIR = pathlib.Path(__file__).resolve().parents[1] / "cure_jax" / "methods"
SMOKE = config_lib.apply_overrides(config_lib.load_config("smoke"), [
    "baselines.clusters=4", "baselines.kmeans_restarts=1"])


def test_no_method_imports_the_evaluator_or_the_metrics():
    for path in METHODS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("cure_jax.evaluation", "cure_jax.metrics")), (
                    f"{path.name} imports {name}")


@pytest.fixture
def tiny_method():
    """A method written as a user would add one: settings, a loss, phases, a registration."""

    @dataclasses.dataclass(frozen=True)
    class TinySettings:
        epochs: int = 2
        lr: float = 1e-3

    settings = TinySettings()

    @base.register("tiny", check=check_labels, reads=BASELINE_READS)
    def run(context):
        labels = make_labels(context)
        return run_phases(context, tx=sgd(settings.lr, 0.9), centres_KxD=labels.centres,
                          phases=[Phase("retain", classifier_loss(scale=labels.scale),
                                        context.retain.source(labels.retain), settings.epochs)])

    yield "tiny"
    del base.METHODS["tiny"]


def test_a_tiny_method_trains_resumes_and_is_checked_before_training(tiny_method, tmp_path):
    spec = get_method(tiny_method)
    assert spec.reads == ("tiny.", *BASELINE_READS)
    with pytest.raises(ValueError, match="fewer than one batch"):
        spec.check(SMOKE, 4, 40)
    context = tiny_context(tmp_path, SMOKE)
    student = spec.run(context)
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree.leaves(student.params), jax.tree.leaves(context.teacher.params),
                 strict=True)]
    assert max(moved) > 0
    log = (tmp_path / "retain" / "metrics.jsonl").read_text()
    # A second run restores the finished phase instead of training again.
    again = spec.run(context)
    assert (tmp_path / "retain" / "metrics.jsonl").read_text() == log
    for a, b in zip(jax.tree.leaves(student.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="registered twice"):
        base.register("tiny")(spec.run)


@pytest.mark.parametrize("name, change, refused", [
    ("scrub", "student.lr=0.5", False),  # the baselines read only the student batch size
    ("scrub", "student.batch_size=32", True),
    ("scrub", "cure.margin=0.1", False),
    ("scrub", "scrub.lr=0.5", True),
    ("scrub", "baselines.clusters=7", True),
    ("cure", "student.lr=0.5", True),
    ("cure", "scrub.lr=0.5", False),
    ("cure", "eval.ues_alpha=0.3", True),
    ("dispersion", "dispersion.kind=mean", True),
    ("retrain", "teacher.lr=0.05", True),
    ("retrain", "student.batch_size=32", False),
])
def test_a_finished_run_is_invalidated_only_by_what_its_method_reads(tmp_path, name, change,
                                                                      refused):
    keys = stages.method_keys(name)
    stages.write_folder_config(tmp_path, SMOKE)
    changed = config_lib.apply_overrides(SMOKE, [change])
    if refused:
        with pytest.raises(config_lib.ConfigError, match=change.split("=")[0]):
            stages.check_folder(tmp_path, changed, keys)
    else:
        stages.check_folder(tmp_path, changed, keys)
