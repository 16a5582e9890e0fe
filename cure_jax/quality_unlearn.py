"""Command line: `python -m cure_jax.quality_unlearn [--config NAME|FILE] [--method cure]
[--seeds 0,1,2] [--set key=value ...] [--workdir RUN]`.

Quality-aware unlearning (SPEC section 6, the CURE paper's Table 3): the teacher scores every
training image with a label-free quality score (`--set quality.score=norm|serfiq|grafiqs`), the
method forgets the images below the 35th percentile (`quality.percentile`), across all people
and without labels, and the result is compared with forgetting as many random images and with
forgetting nothing: verification over all pairs and over the low- and high-quality pairs.
Trains (or reuses) the run folder's teacher; writes `quality/quality_unlearning.md` (and .json,
.png) into the run folder. Every run resumes after a kill; a finished one is reused.
"""

from __future__ import annotations

import sys

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import cli, quality_stage, seeds
from cure_jax import config as config_lib


def parse_args(argv):
    parser = cli.run_parser("python -m cure_jax.quality_unlearn", __doc__)
    parser.add_argument("--method", default=None,
                        help="the unlearning method (default: the config's unlearn.method)")
    cli.add_seeds_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.method:
        args.overrides = [*args.overrides, f"unlearn.method={args.method}"]
    try:
        config, workdir = cli.load_run_config(args)
        seed_list = seeds.parse_seeds(args.seeds) or (config.unlearn.seed,)
    except (config_lib.ConfigError, ValueError) as error:
        return cli.fail(error, 2)
    try:
        report, _ = quality_stage.run(config, workdir, seed_list)
    except cli.RUN_ERRORS as error:
        return cli.fail(error, 1)
    print("\n" + report)
    print(f"report: {workdir / 'quality' / 'quality_unlearning.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
