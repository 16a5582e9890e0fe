"""The stages of a run, shared by every command line: the teacher (trained or reused, with its
embeddings of every evaluation set and its evaluation, both kept in the run folder), the
unlearning request, and one method's run with its evaluation and report.

Every stage resumes or reuses what the run folder already holds: running the same command again
never redoes finished work.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cure_jax import config as config_lib
from cure_jax import methods
from cure_jax.embeddings import (
    EvalEmbeddings,
    cached_eval_embeddings,
    embed_eval_sets,
    make_embed_fn,
)
from cure_jax.evaluation import backbone_metrics, evaluate_unlearning
from cure_jax.methods.base import Supervision, UnlabelledSet, UnlearnContext
from cure_jax.models.backbone import Backbone, Graphs
from cure_jax.report import plot_embeddings, unlearning_report
from cure_jax.teacher import Teacher, train_teacher
from data_pipelines.splits import RequestSplit, forget_identities

# What the teacher depends on: a workdir's teacher is reused only when these keys agree.
TEACHER_KEYS = ("data.", "model.", "teacher.", "run.seed")
# What every method's result depends on besides the teacher and what the method reads
# (`MethodSpec.reads`): the request and its evaluation.
REQUEST_KEYS = ("unlearn.", "eval.")


def prepare_folder(folder: pathlib.Path, config: config_lib.Config, *,
                   only: tuple[str, ...] | None = None) -> None:
    """Creates a run folder and writes the resolved config into it; refuses to reuse a folder
    whose config differs (in the keys starting with one of `only`, when given)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    if path.exists():
        previous = config_lib.from_dict(json.loads(path.read_text()))
        changed = [k for k in config_lib.differences(previous, config)
                   if k not in config_lib.RUNTIME_KEYS
                   and (only is None or k.startswith(only))]
        if changed:
            raise config_lib.ConfigError(
                f"{folder} holds a run with a different config (keys: {', '.join(changed)}); "
                "use another --workdir, or delete that folder to start over")
    config_lib.write_config(config, path)


class TeacherRun(NamedTuple):
    """The trained teacher and everything computed from it once per run folder."""

    teacher: Teacher  # backbone and margin head
    graphs: Graphs  # the backbone's graphs
    backbone: Backbone  # the backbone's arrays
    embed: Callable  # `make_embed_fn(graphs.eval)`, shared by every backbone of the run
    embeddings: EvalEmbeddings  # of every evaluation set, training images in both orientations
    metrics: dict  # held-out accuracy and verification


def teacher_stage(config, workdir: pathlib.Path, mesh, data) -> TeacherRun:
    """Trains (or resumes, or reuses) the teacher, embeds the evaluation sets with it and
    evaluates it, keeping embeddings and metrics in `workdir/teacher`."""
    start = time.perf_counter()
    teacher = train_teacher(config, data, workdir, mesh)
    train_seconds = time.perf_counter() - start
    graphs, backbone = teacher.backbone()
    embed = make_embed_fn(graphs.eval)
    embeddings = cached_eval_embeddings(
        workdir / "teacher" / "embeddings.npz", embed, backbone, data,
        batch_size=config.eval.batch_size, mesh=mesh, flip_test=config.eval.flip,
        progress=config.run.progress)
    eval_path = workdir / "teacher" / "eval.json"
    if eval_path.exists():
        metrics = json.loads(eval_path.read_text())
    else:
        metrics = backbone_metrics(embeddings, data, teacher.class_centres())
        metrics["train_seconds"] = train_seconds
        eval_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print("teacher: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in metrics.items()))
    return TeacherRun(teacher, graphs, backbone, embed, embeddings, metrics)


def request_split(config, data) -> RequestSplit:
    """The forget/retain split of the run's unlearning request, checked against the method
    before anything trains."""
    spec = methods.get_method(config.unlearn.method)
    request = config.unlearn
    forget_ids = forget_identities(data.records.labels[data.train_indices],
                                   count=request.forget_identities,
                                   fraction=request.forget_fraction, seed=request.seed)
    split = RequestSplit.of(data.records.labels, data.train_indices, data.holdout_indices,
                            forget_ids)
    if spec.check is not None:
        spec.check(config, len(split.forget), len(split.retain))
    return split


def unlearn_context(config, folder: pathlib.Path, mesh, data, teacher_run: TeacherRun,
                    split: RequestSplit) -> UnlearnContext:
    """What a method may see of the request: images and the teacher's embeddings of them; labels
    only where the config says the request carries them."""
    rows_forget = np.searchsorted(data.train_indices, split.forget)
    rows_retain = np.searchsorted(data.train_indices, split.retain)
    emb = teacher_run.embeddings
    images = data.records.images
    labels = data.records.labels
    return UnlearnContext(
        config=config, graphs=teacher_run.graphs, teacher=teacher_run.backbone,
        forget=UnlabelledSet(images[split.forget], emb.train[rows_forget],
                             emb.train_flipped[rows_forget]),
        retain=UnlabelledSet(images[split.retain], emb.train[rows_retain],
                             emb.train_flipped[rows_retain]),
        mesh=mesh, folder=folder,
        # Identity labels reach a method only when the request itself names them.
        forget_groups=(labels[split.forget] if config.dispersion.groups == "labels" else None),
        supervision=(Supervision(labels[split.forget], labels[split.retain],
                                 np.asarray(teacher_run.teacher.class_centres()),
                                 config.model.scale)
                     if config.baselines.labels == "true" else None))


def unlearn_stage(config, workdir: pathlib.Path, mesh, data, teacher_run: TeacherRun,
                  split: RequestSplit) -> dict:
    """Runs `unlearn.method` on the request (or reuses its finished run), evaluates the student
    and writes `metrics.json`, `report.md` and `embeddings.png` into `workdir/<method>`."""
    name = config.unlearn.method
    folder = workdir / name
    spec = methods.get_method(name)
    prepare_folder(folder, config, only=(*TEACHER_KEYS, *REQUEST_KEYS, *spec.reads))
    if (folder / "metrics.json").exists():
        print(f"{name}: finished earlier, reusing {folder / 'metrics.json'}")
        print("\n" + (folder / "report.md").read_text())
        return json.loads((folder / "metrics.json").read_text())
    context = unlearn_context(config, folder, mesh, data, teacher_run, split)
    start = time.perf_counter()
    student = spec.run(context)
    seconds = time.perf_counter() - start
    student_emb = embed_eval_sets(teacher_run.embed, student, data,
                                  batch_size=config.eval.batch_size, mesh=mesh,
                                  mirror_train=False, flip_test=config.eval.flip,
                                  progress=config.run.progress, who=f"{name}: ")
    evaluation = evaluate_unlearning(
        teacher=teacher_run.embeddings, student=student_emb,
        teacher_params=teacher_run.backbone.params, student_params=student.params,
        centres_CxD=teacher_run.teacher.class_centres(), split=split, data=data, config=config,
        own_embedding_space=spec.own_embedding_space)
    metrics = evaluation.metrics
    plot_embeddings(evaluation, folder / "embeddings.png", title=f"{name} on {config.name}")
    metrics.update(method=name, unlearn_seconds=seconds, ues_alpha=config.eval.ues_alpha)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = unlearning_report(metrics, method=name, title=f"{name} on {config.name}")
    (folder / "report.md").write_text(report)
    print("\n" + report)
    print(f"report: {folder / 'report.md'}")
    return metrics
