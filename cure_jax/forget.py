"""Command line: `python -m cure_jax.forget --photos DIR [--config NAME|FILE] [--workdir RUN]
[--method cure] [--far 1e-3] [--aligned] [--set key=value ...]`.

Serves a right-to-be-forgotten request: a flat folder of photos of one person, against the
unlabelled training set of the run folder's model. The photos are aligned (YuNet; `--aligned`
for photos already prepared like the training images), embedded with the model (flip test) and
compared with every training image: the images whose score is above a threshold calibrated on
the model's verification people at the false-accept rate `--far` are the person's (score: the
cosine to the normalised mean of the photos' unit embeddings, `--set forget.statistic=max` for
the best single photo). The method (`--method`, CURE by default) then unlearns those images,
and only those, and the student, its audit (`requests/<k>/report.md`, a self-contained
`report.html`) and the ledger `requests.json` are written into the run folder.

Requests follow one another: the second starts from the first one's student. The same photos
again are answered from the ledger and change nothing; an interrupted request resumes when run
again. A request that cannot be served (no face, several people, nobody matched, a single
image, most of the training set) is refused with the reason, and nothing on disk changes
(exit status 3).

The run folder must hold a finished teacher (`python -m cure_jax.train --stage teacher`).
"""

from __future__ import annotations

import pathlib
import shlex
import sys

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import cli, forget_stage
from cure_jax.config import ConfigError
from cure_jax.request_photos import PhotoError

REFUSED = 3  # exit status of a request that cannot be served


def parse_args(argv):
    parser = cli.run_parser("python -m cure_jax.forget", __doc__)
    parser.add_argument("--photos", required=True, type=pathlib.Path,
                        help="a flat folder of photos of the person to forget")
    parser.add_argument("--method", default=None,
                        help="the unlearning method (default: the config's unlearn.method)")
    parser.add_argument("--far", default=None,
                        help="the search's false-accept rate (default: forget.far, 1e-3)")
    parser.add_argument("--aligned", action="store_true",
                        help="the photos are face crops prepared like the training images: "
                             "no face detection")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.overrides = [*args.overrides,
                      *([f"unlearn.method={args.method}"] if args.method else []),
                      *([f"forget.far={args.far}"] if args.far else [])]
    try:
        config, workdir = cli.load_run_config(args)
    except ConfigError as error:
        return cli.fail(error, 2)
    command = "python -m cure_jax.forget " + shlex.join(argv)
    try:
        entry, served_now = forget_stage.serve(config, workdir, args.photos,
                                               aligned=args.aligned, command=command)
    except (forget_stage.RequestRefused, PhotoError) as error:
        print(f"request refused: {error}. Nothing was changed.", file=sys.stderr)
        return REFUSED
    except (*cli.RUN_ERRORS, ImportError, RuntimeError) as error:  # no OpenCV, no YuNet
        return cli.fail(error, 1)
    report = workdir / entry["report"]
    if not served_now:
        print(f"these photos were served as request {entry['number']} on {entry['finished']} "
              f"({entry['found_count']} training images forgotten); nothing was changed. "
              f"Report: {report}")
        return 0
    print(f"request {entry['number']} served: {entry['found_count']} training images forgotten; "
          f"student in {workdir / entry['student']}; report: {report} "
          f"(and {report.with_suffix('.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
