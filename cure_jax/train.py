"""Command line: `python -m cure_jax.train [--config FILE|NAME] [--set key=value ...]
[--workdir DIR] [--stage teacher|all]`.

With no arguments it runs the whole job on the embedded synthetic faces in `runs/default`: train
the teacher, make a student forget `unlearn.forget_identities` people with `unlearn.method`
(CURE), evaluate both and write `runs/default/<method>/report.md` and `metrics.json`.
Running the same command again resumes from the last checkpoints; a finished stage is reused.
"""

from __future__ import annotations

import sys

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import cli, methods, sharding, stages
from cure_jax.config import ConfigError
from data_pipelines.datasets import load_face_data

STAGES = ("teacher", "all")


def parse_args(argv):
    parser = cli.run_parser("python -m cure_jax.train", __doc__)
    parser.add_argument("--stage", default="all", choices=STAGES)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config, workdir = cli.load_run_config(args)
    except ConfigError as error:
        return cli.fail(error, 2)
    try:
        stages.prepare_folder(workdir, config, only=stages.TEACHER_KEYS)
        mesh = sharding.make_mesh(config.run.num_devices)
        if args.stage != "teacher":
            methods.get_method(config.unlearn.method)  # a bad name fails before any work
        data = load_face_data(config.data, progress=config.run.progress)
        split = stages.request_split(config, data) if args.stage != "teacher" else None
        teacher_run = stages.teacher_stage(config, workdir, mesh, data)
        if split is not None:
            stages.unlearn_stage(config, workdir, mesh, data, teacher_run, split)
    except cli.RUN_ERRORS as error:
        return cli.fail(error, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
