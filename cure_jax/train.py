"""Command line: `python -m cure_jax.train [--config FILE|NAME] [--set key=value ...]
[--workdir DIR] [--stage teacher|all]`.

With no arguments it runs the whole job on the embedded synthetic faces in `runs/default`.
Running the same command again resumes from the last checkpoints; a finished stage is reused.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import sharding
from cure_jax.embeddings import make_embed_fn
from cure_jax.evaluation import evaluate_backbone
from cure_jax.loop import NonFiniteLossError
from cure_jax.teacher import train_teacher
from data_pipelines.datasets import load_face_data

STAGES = ("teacher", "all")


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


def prepare_workdir(workdir: pathlib.Path, config: config_lib.Config) -> None:
    """Creates the run folder and writes the resolved config; refuses to mix two configs."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    if path.exists():
        previous = config_lib.from_dict(json.loads(path.read_text()))
        changed = [k for k in config_lib.differences(previous, config)
                   if k not in config_lib.RUNTIME_KEYS]
        if changed:
            raise config_lib.ConfigError(
                f"{workdir} holds a run with a different config (keys: {', '.join(changed)}); "
                "use another --workdir, or delete that folder to start over")
    config_lib.write_config(config, path)


def run_teacher_stage(config, workdir: pathlib.Path, mesh, data) -> dict:
    start = time.perf_counter()
    teacher = train_teacher(config, data, workdir, mesh)
    train_seconds = time.perf_counter() - start
    embed = make_embed_fn(teacher.graphs.eval)
    centres = teacher.params["head"]["centres"][...]
    metrics = evaluate_backbone(embed, teacher.params, teacher.batch_stats, centres, data, config,
                                mesh)
    metrics["train_seconds"] = train_seconds
    (workdir / "teacher" / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("teacher: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in metrics.items()))
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
        prepare_workdir(workdir, config)
        mesh = sharding.make_mesh(config.run.num_devices)
        data = load_face_data(config.data, progress=config.run.progress)
        run_teacher_stage(config, workdir, mesh, data)
    except (config_lib.ConfigError, NonFiniteLossError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
