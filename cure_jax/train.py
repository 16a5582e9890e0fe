"""Command line: `python -m cure_jax.train [--config FILE|NAME] [--set key=value ...]
[--workdir DIR] [--stage teacher|all]`.

With no arguments it runs the whole job on the embedded synthetic faces in `runs/default`: train
the teacher, make a student forget `unlearn.forget_identities` people with `unlearn.method`
(CURE), evaluate both and write `runs/default/<method>/report.md` and `metrics.json`.
Running the same command again resumes from the last checkpoints; a finished stage is reused.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import methods, sharding
from cure_jax.embeddings import cached_embeddings, make_embed_fn
from cure_jax.evaluation import RequestSplit, evaluate_backbone, evaluate_unlearning
from cure_jax.loop import NonFiniteLossError
from cure_jax.methods.base import Supervision, UnlabelledSet, UnlearnContext
from cure_jax.report import plot_embeddings, unlearning_report
from cure_jax.teacher import Teacher, train_teacher
from data_pipelines.datasets import load_face_data
from data_pipelines.pipelines import SubsetSource
from data_pipelines.splits import forget_identities

STAGES = ("teacher", "all")
# What the teacher depends on: a workdir's teacher is reused only when these keys agree.
TEACHER_KEYS = ("data.", "model.", "teacher.", "run.seed")
# What every method's result depends on, besides its own config sections.
METHOD_KEYS = ("unlearn.", "student.", "baselines.", "eval.")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m cure_jax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default",
                        help="a configs/<name>.py file path, or a bundled config name")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field, e.g. teacher.lr=0.05")
    parser.add_argument("--workdir", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--stage", default="all", choices=STAGES)
    return parser.parse_args(argv)


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


def run_teacher_stage(config, workdir: pathlib.Path, mesh, data) -> Teacher:
    """Trains (or resumes, or reuses) the teacher and evaluates it once."""
    start = time.perf_counter()
    teacher = train_teacher(config, data, workdir, mesh)
    eval_path = workdir / "teacher" / "eval.json"
    if eval_path.exists():
        metrics = json.loads(eval_path.read_text())
    else:
        train_seconds = time.perf_counter() - start
        graphs, backbone = teacher.backbone()
        metrics = evaluate_backbone(make_embed_fn(graphs.eval), backbone.params,
                                    backbone.batch_stats, teacher.class_centres(), data, config,
                                    mesh)
        metrics["train_seconds"] = train_seconds
        eval_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print("teacher: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in metrics.items()))
    return teacher


def request_split(config, data) -> RequestSplit:
    """The forget/retain split of the run's unlearning request, checked against the method
    before anything trains."""
    spec = methods.get_method(config.unlearn.method)
    request = config.unlearn
    forget_ids = forget_identities(data.records.labels[data.train_indices],
                                   count=request.forget_identities,
                                   fraction=request.forget_fraction, seed=request.seed)
    split = RequestSplit.of(data, forget_ids)
    if spec.check is not None:
        spec.check(config, len(split.forget), len(split.retain))
    return split


def run_unlearn_stage(config, workdir: pathlib.Path, mesh, data, teacher: Teacher,
                      split: RequestSplit) -> dict:
    """Runs `unlearn.method` on the request, evaluates the student, writes the report."""
    name = config.unlearn.method
    folder = workdir / name
    spec = methods.get_method(name)
    prepare_folder(folder, config, only=(*TEACHER_KEYS, *METHOD_KEYS,
                                         *(f"{section}." for section in spec.sections)))
    if (folder / "metrics.json").exists():
        print(f"{name}: finished earlier, reusing {folder / 'metrics.json'}")
        print("\n" + (folder / "report.md").read_text())
        return json.loads((folder / "metrics.json").read_text())
    graphs, backbone = teacher.backbone()
    embed = make_embed_fn(graphs.eval)
    # The teacher's embeddings of every training image, both orientations: computed once per
    # workdir and shared by every method and request.
    plain, flipped = cached_embeddings(
        workdir / "teacher" / "embeddings.npz", embed, backbone.params, backbone.batch_stats,
        SubsetSource(data.records, data.train_indices), batch_size=config.eval.batch_size,
        mesh=mesh, progress=config.run.progress)
    rows_forget = np.searchsorted(data.train_indices, split.forget)
    rows_retain = np.searchsorted(data.train_indices, split.retain)
    images = data.records.images
    context = UnlearnContext(
        config=config, graphs=graphs, teacher=backbone,
        forget=UnlabelledSet(images[split.forget], plain[rows_forget], flipped[rows_forget]),
        retain=UnlabelledSet(images[split.retain], plain[rows_retain], flipped[rows_retain]),
        mesh=mesh, folder=folder,
        # Identity labels reach a method only when the request itself names them.
        forget_groups=(data.records.labels[split.forget]
                       if config.dispersion.groups == "labels" else None),
        supervision=(Supervision(data.records.labels[split.forget],
                                 data.records.labels[split.retain],
                                 np.asarray(teacher.class_centres()), config.model.scale)
                     if config.baselines.labels == "true" else None))
    start = time.perf_counter()
    student = spec.run(context)
    seconds = time.perf_counter() - start
    evaluation = evaluate_unlearning(
        embed=embed, teacher=backbone, student=student, centres_CxD=teacher.class_centres(),
        split=split, data=data, config=config, mesh=mesh, teacher_forget=plain[rows_forget],
        teacher_retain=plain[rows_retain], own_embedding_space=spec.own_embedding_space)
    metrics = evaluation.metrics
    plot_embeddings(evaluation, folder / "embeddings.png", title=f"{name} on {config.name}")
    metrics.update(method=name, unlearn_seconds=seconds, ues_alpha=config.eval.ues_alpha)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = unlearning_report(metrics, method=name, title=f"{name} on {config.name}")
    (folder / "report.md").write_text(report)
    print("\n" + report)
    print(f"report: {folder / 'report.md'}")
    return metrics


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    except config_lib.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / config.name)
    try:
        prepare_folder(workdir, config, only=TEACHER_KEYS)
        mesh = sharding.make_mesh(config.run.num_devices)
        if args.stage != "teacher":
            methods.get_method(config.unlearn.method)  # a bad name fails before any work
        data = load_face_data(config.data, progress=config.run.progress)
        split = request_split(config, data) if args.stage != "teacher" else None
        teacher = run_teacher_stage(config, workdir, mesh, data)
        if split is not None:
            run_unlearn_stage(config, workdir, mesh, data, teacher, split)
    except (config_lib.ConfigError, NonFiniteLossError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
