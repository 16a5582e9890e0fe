"""The stages of a run, shared by every command line: the teacher (trained or reused, with its
embeddings of every evaluation set and its evaluation, both kept in the run folder), the
unlearning request, and one method's run with its evaluation and report.

Every stage resumes or reuses what the run folder already holds: running the same command again
never redoes finished work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cure_jax import config as config_lib
from cure_jax import methods, model_files, sharding
from cure_jax.embeddings import (
    EvalEmbeddings,
    cached_eval_embeddings,
    embed_eval_sets,
    make_embed_fn,
)
from cure_jax.evaluation import backbone_metrics, evaluate_unlearning
from cure_jax.methods.base import Supervision, UnlabelledSet, UnlearnContext
from cure_jax.models import pretrained
from cure_jax.models.backbone import Backbone, Graphs
from cure_jax.report import plot_embeddings, unlearning_report
from cure_jax.teacher import Teacher, train_teacher
from data_pipelines.datasets import load_face_data
from data_pipelines.sources.lfw_pairs import format_pairs, read_pairs
from data_pipelines.splits import RequestSplit, forget_identities

# What the teacher depends on: a workdir's teacher is reused only when these keys agree.
TEACHER_KEYS = ("data.", "model.", "teacher.", "run.seed")
# What every method's result depends on besides the teacher and what the method reads
# (`MethodSpec.reads`): the request and its evaluation.
REQUEST_KEYS = ("unlearn.", "eval.")
# Verification pairs drawn among held-out identities, kept in the run folder in pairs.txt form.
DRAWN_PAIRS_FILE = "verification_pairs.txt"


def check_folder(folder: pathlib.Path, config: config_lib.Config,
                 keys: tuple[str, ...]) -> None:
    """Refuses, before any work, to reuse a run folder whose run was made with other values of
    `keys` (config keys, or prefixes ending in "."). With `run.restart_from` set, a changed
    learning rate (a key ending in ".lr") is accepted: that is how a run continues after a
    non-finite loss.

    Raises:
      ConfigError: naming the differing keys, their values there and now, and what to do.
    """
    path = folder / "config.json"
    if not path.exists():
        return
    previous = config_lib.from_dict(json.loads(path.read_text()))
    changed = [k for k in config_lib.differences(previous, config)
               if k not in config_lib.RUNTIME_KEYS and k.startswith(keys)
               and not (config.run.restart_from >= 0 and k.endswith(".lr"))]
    if changed:
        values = "; ".join(f"{k}={config_lib.get_value(previous, k)!r} there, "
                           f"{config_lib.get_value(config, k)!r} now" for k in changed)
        raise config_lib.ConfigError(
            f"{folder} holds a run made with other settings ({values}). To resume that run, "
            "use its settings again; to start fresh, use another --workdir or delete "
            f"{folder}.")


def check_writable(folder: pathlib.Path) -> None:
    """Raises ConfigError when `folder` cannot become a run folder (a file stands there, or the
    nearest existing parent cannot be written)."""
    if folder.exists() and not folder.is_dir():
        raise config_lib.ConfigError(f"--workdir {folder} is a file, not a folder")
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise config_lib.ConfigError(f"--workdir {folder}: {existing} cannot be written")


def check_drawn_pairs(workdir: pathlib.Path, data) -> None:
    """Refuses a run folder whose verification pairs, drawn by an earlier run among held-out
    identities, are not the pairs drawn now (the images changed since): its results would not
    compare.

    Raises:
      ValueError: naming the file and the first pair that differs.
    """
    path = workdir / DRAWN_PAIRS_FILE
    if not data.drawn_pairs:
        return
    if not path.exists():
        if (workdir / "config.json").exists():  # made before held-out verification existed
            raise ValueError(f"{workdir} holds a run made before identities were held out "
                             f"for verification (no {DRAWN_PAIRS_FILE}; every identity trained "
                             "its teacher); use another --workdir")
        return
    kept = read_pairs(path)
    if kept == data.drawn_pairs:
        return
    differ = [k for k, (a, b) in enumerate(zip(kept, data.drawn_pairs, strict=False)) if a != b]
    where = (f"pair {differ[0] + 1}: {_pair_text(kept[differ[0]])} there, "
             f"{_pair_text(data.drawn_pairs[differ[0]])} now" if differ
             else f"{len(kept)} pairs there, {len(data.drawn_pairs)} now")
    raise ValueError(f"{path} holds other verification pairs than the data gives now ({where}): "
                     "its images changed since that run. To compare with it, restore them; to "
                     f"start fresh, use another --workdir or delete {workdir}.")


def _pair_text(pair) -> str:
    return f"{pair.name_a} {pair.number_a} / {pair.name_b} {pair.number_b}"


def write_folder_config(folder: pathlib.Path, config: config_lib.Config) -> None:
    """Writes the resolved config into a run folder (after every check has passed)."""
    folder.mkdir(parents=True, exist_ok=True)
    config_lib.write_config(config, folder / "config.json")


def method_keys(name: str) -> tuple[str, ...]:
    """The config keys a finished run of method `name` depends on."""
    return (*TEACHER_KEYS, *REQUEST_KEYS, *methods.get_method(name).reads)


def with_method(config: config_lib.Config, name: str) -> config_lib.Config:
    """`config` with `unlearn.method` set to `name`."""
    return dataclasses.replace(config, unlearn=dataclasses.replace(config.unlearn, method=name))


def preflight(config, data, mesh) -> None:
    """The checks that need the data and the devices, made before any training.

    Raises:
      ConfigError: a batch the data or the devices cannot fill, naming the key.
    """
    sharding.check_batch_size(config.teacher.batch_size, mesh, "teacher.batch_size")
    sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
    num_train = len(data.train_indices)
    if config.teacher.batch_size > num_train:
        raise config_lib.ConfigError(
            f"teacher.batch_size={config.teacher.batch_size} is more than the {num_train} "
            "training images; lower it")


class Job(NamedTuple):
    """One unlearning run of a command on the workdir's teacher: a method, with another seed,
    an ablation."""

    config: object  # the run's Config: `unlearn.method`, its seed and its overrides set
    folder: pathlib.Path  # where the run keeps its checkpoints, metrics and report
    label: str  # its name in messages and report titles


class Start(NamedTuple):
    """What a run needs once every check has passed."""

    mesh: object
    data: object  # FaceData
    splits: dict  # method name -> RequestSplit
    job_splits: tuple = ()  # the RequestSplit of each of `start`'s jobs, in order


def start(config, workdir: pathlib.Path, method_names: list[str],
          jobs: tuple[Job, ...] = (), checks: tuple[Callable, ...] = ()) -> Start:
    """Every check a run can make before any work (config, devices, run folders, data, each
    method's request), then the run folder's config: a failed start changes nothing on disk.

    Args:
      method_names: methods run with `config` in `workdir/<method>`.
      jobs: further runs with configs and folders of their own, on the same teacher.
      checks: a command's own checks, each called with the data and the mesh once they are
        loaded, before anything is written.

    Raises:
      ConfigError, ValueError, FileNotFoundError: naming what is wrong.
    """
    mesh = sharding.make_mesh(config.run.num_devices)
    check_writable(workdir)
    check_folder(workdir, config, TEACHER_KEYS)
    for name in method_names:
        methods.get_method(name)  # a bad name fails first
        check_folder(workdir / name, with_method(config, name), method_keys(name))
    for job in jobs:
        check_folder(workdir, job.config, TEACHER_KEYS)  # one teacher for every job
        check_folder(job.folder, job.config, method_keys(job.config.unlearn.method))
    pretrained.check(config)
    data = load_face_data(config.data, progress=config.run.progress)
    preflight(config, data, mesh)
    splits = {name: request_split(with_method(config, name), data) for name in method_names}
    job_splits = tuple(request_split(job.config, data) for job in jobs)
    for check in checks:
        check(data, mesh)
    check_drawn_pairs(workdir, data)
    write_folder_config(workdir, config)
    if data.drawn_pairs and not (workdir / DRAWN_PAIRS_FILE).exists():
        (workdir / DRAWN_PAIRS_FILE).write_text(format_pairs(data.drawn_pairs))
    if data.skipped_files:
        (workdir / "skipped_images.txt").write_text("".join(f"{path}\n"
                                                            for path in data.skipped_files))
    if data.alignment:
        (workdir / "alignment.json").write_text(json.dumps(data.alignment, indent=2) + "\n")
        for name, found in data.alignment.items():
            print(f"alignment: {name}: {found['photos']} photos, {found['outcomes']}; "
                  f"{len(found['without_face_files'])} without a face ({found['without_face']})")
    return Start(mesh, data, splits, job_splits)


class TeacherRun(NamedTuple):
    """The trained teacher and everything computed from it once per run folder."""

    teacher: Teacher  # backbone and margin head
    graphs: Graphs  # the backbone's graphs
    backbone: Backbone  # the backbone's arrays
    embed: Callable  # `make_embed_fn(graphs.eval)`, shared by every backbone of the run
    embeddings: EvalEmbeddings  # of every evaluation set, training images in both orientations
    metrics: dict  # held-out accuracy and verification
    files: dict  # the pretrained file and the exported teacher, with their sha256 (model_files)


def teacher_stage(config, workdir: pathlib.Path, mesh, data) -> TeacherRun:
    """Trains (or resumes, or reuses) the teacher, embeds the evaluation sets with it and
    evaluates it, keeping embeddings and metrics in `workdir/teacher`."""
    files = model_files.pretrained_record(config, workdir / "teacher", data, mesh)
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
    files.update(model_files.teacher_record(config, workdir / "teacher", graphs.eval, backbone,
                                            data))
    print("teacher: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in {**metrics, **files}.items()))
    return TeacherRun(teacher, graphs, backbone, embed, embeddings, metrics, files)


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


def image_split(data, forget: np.ndarray, excluded=()) -> RequestSplit:
    """A request by images rather than people: forget = the training records `forget`; retain =
    every other training record not in `excluded` (images forgotten before). No identities."""
    forget = np.asarray(forget, np.int64)
    gone = np.concatenate([forget, np.asarray(excluded, np.int64)])
    retain = data.train_indices[~np.isin(data.train_indices, gone)]
    empty = np.zeros(0, np.int64)
    return RequestSplit(empty, forget, retain, empty, empty)


def sized_for_images(config, num_forget: int, mesh, *, steps: int, max_clusters: int):
    """`config` sized to a forget set of `num_forget` images: student batches of at most that
    many (a multiple of the devices, and for a method of P x K batches of
    `dispersion.images_per_group`, with P = batch / K), epochs for `steps` steps with every
    epoch-valued setting scaled alike (a P x K method's `dispersion.epochs` too), and at most
    `max_clusters` CURE forget clusters (and half the images).

    Raises:
      ValueError: the images cannot fill a batch on the devices.
      ConfigError: a sized value out of its range.
    """
    student, dispersion = config.student, config.dispersion
    pk_batches = methods.get_method(config.unlearn.method).pk_batches
    multiple = math.lcm(mesh.size, dispersion.images_per_group) if pk_batches else mesh.size
    batch = min(student.batch_size, num_forget) // multiple * multiple
    if batch < 1:
        raise ValueError(f"{num_forget} images cannot fill a batch of a multiple of {multiple} "
                         f"({mesh.size} device(s)"
                         + (f", groups of dispersion.images_per_group="
                            f"{dispersion.images_per_group}" if pk_batches else "") + ")")
    epochs = max(1, math.ceil(steps / (num_forget // batch)))
    scale = epochs / student.epochs
    student = dataclasses.replace(
        student, batch_size=batch, epochs=epochs,
        milestones=tuple(m * scale for m in student.milestones),
        warmup_epochs=student.warmup_epochs * scale)
    cure = dataclasses.replace(config.cure,
                               forget_clusters=max(1, min(max_clusters, num_forget // 2)),
                               refresh_every=config.cure.refresh_every * scale)
    if pk_batches:
        dispersion = dataclasses.replace(
            dispersion, groups_per_batch=batch // dispersion.images_per_group, epochs=epochs)
    sized = dataclasses.replace(config, student=student, cure=cure, dispersion=dispersion)
    config_lib.validate(sized)
    return sized


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
                  split: RequestSplit, *, folder: pathlib.Path | None = None,
                  label: str | None = None) -> dict:
    """Runs `unlearn.method` on the request (or reuses its finished run), evaluates the student
    and writes `metrics.json`, `report.md` and `embeddings.png` into `folder` (default
    `workdir/<method>`); `label` names the run in messages and titles (default the method)."""
    name = config.unlearn.method
    folder = folder or workdir / name
    label = label or name
    spec = methods.get_method(name)
    check_folder(folder, config, method_keys(name))
    write_folder_config(folder, config)
    if (folder / "metrics.json").exists():
        print(f"{label}: finished earlier, reusing {folder / 'metrics.json'}")
        print("\n" + (folder / "report.md").read_text())
        return json.loads((folder / "metrics.json").read_text())
    context = unlearn_context(config, folder, mesh, data, teacher_run, split)
    start = time.perf_counter()
    student = spec.run(context)
    seconds = time.perf_counter() - start
    files = {**teacher_run.files, **model_files.export_backbone(
        config, teacher_run.graphs.eval, student, folder / "student",
        model_files.check_pixels(data), who="student")}
    student_emb = embed_eval_sets(teacher_run.embed, student, data,
                                  batch_size=config.eval.batch_size, mesh=mesh,
                                  mirror_train=False, flip_test=config.eval.flip,
                                  progress=config.run.progress, who=f"{label}: ")
    evaluation = evaluate_unlearning(
        teacher=teacher_run.embeddings, student=student_emb,
        teacher_params=teacher_run.backbone.params, student_params=student.params,
        centres_CxD=teacher_run.teacher.class_centres(), split=split, data=data, config=config,
        own_embedding_space=spec.own_embedding_space)
    metrics = evaluation.metrics
    plot_embeddings(evaluation, folder / "embeddings.png", title=f"{label} on {config.name}")
    metrics.update(method=name, unlearn_seconds=seconds, ues_alpha=config.eval.ues_alpha,
                   **files)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = unlearning_report(metrics, method=label, title=f"{label} on {config.name}")
    (folder / "report.md").write_text(report)
    print("\n" + report)
    print(f"report: {folder / 'report.md'}")
    return metrics


class Reloaded(NamedTuple):
    """What `start` and `teacher_stage` gave a command, loaded again in another process."""

    mesh: object
    data: object  # FaceData
    teacher_run: TeacherRun


def reload(config, workdir: pathlib.Path) -> Reloaded:
    """The data and the teacher of `workdir` for a process that runs a command's jobs (`--jobs`,
    cure_jax/job_pool.py) after the command's `start` and `teacher_stage`: the teacher's
    checkpoint, embeddings and records are read, nothing is written."""
    mesh = sharding.make_mesh(config.run.num_devices)
    data = load_face_data(config.data, progress=False)
    return Reloaded(mesh, data, teacher_stage(config, workdir, mesh, data))
