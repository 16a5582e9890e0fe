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
from cure_jax import cli, stages
from cure_jax.config import ConfigError

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
    names = [] if args.stage == "teacher" else [config.unlearn.method]
    try:
        run = stages.start(config, workdir, names)
        teacher_run = stages.teacher_stage(config, workdir, run.mesh, run.data)
        for name in names:
            stages.unlearn_stage(config, workdir, run.mesh, run.data, teacher_run,
                                 run.splits[name])
    except cli.RUN_ERRORS as error:
        return cli.fail(error, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
