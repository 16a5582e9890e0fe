"""Command line: `python -m cure_jax.compare [--config FILE|NAME] [--methods a,b,...]
[--set key=value ...] [--workdir DIR]`.

Trains (or reuses) one teacher and one teacher-embedding cache, runs every method on the same
unlearning request, and writes `comparison.md`, `comparison.json` and `comparison.png` into the
workdir (default `runs/<config name>`). A method whose run finished is not rerun; an interrupted
one resumes from its checkpoints.
"""

from __future__ import annotations

import json
import sys

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import cli, methods, stages
from cure_jax import config as config_lib
from cure_jax.report import comparison_report, plot_comparison

# Table order: the reference first, then the papers' baselines, then the proposed methods.
ORDER = ("retrain", "finetune", "grad_ascent", "neggrad", "random_label", "boundary_shrink",
         "scrub", "bad_teacher", "unsir", "dispersion", "cure", "cure+dispersion")


def parse_args(argv):
    parser = cli.run_parser("python -m cure_jax.compare", __doc__)
    parser.add_argument("--methods", default="all",
                        help="comma-separated method names, or 'all' (default)")
    return parser.parse_args(argv)


def method_names(text: str) -> list[str]:
    """The methods to run, in table order; raises ValueError naming the valid ones."""
    registered = sorted(methods.METHODS, key=lambda n: (ORDER.index(n) if n in ORDER
                                                        else len(ORDER), n))
    if text == "all":
        return registered
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in methods.METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; valid: "
                         f"{', '.join(registered)}")
    return [n for n in registered if n in names]


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config, workdir = cli.load_run_config(args)
        names = method_names(args.methods)
    except (config_lib.ConfigError, ValueError) as error:
        return cli.fail(error, 2)
    try:
        run = stages.start(config, workdir, names)
        teacher_run = stages.teacher_stage(config, workdir, run.mesh, run.data)
        results = {}
        for name in names:
            print(f"\n=== {name} ===")
            results[name] = stages.unlearn_stage(stages.with_method(config, name), workdir,
                                                 run.mesh, run.data, teacher_run,
                                                 run.splits[name])
    except cli.RUN_ERRORS as error:
        return cli.fail(error, 1)
    (workdir / "comparison.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_comparison(results, workdir / "comparison.png", title=f"methods on {config.name}")
    report = comparison_report(results, title=f"Unlearning methods on {config.name}")
    (workdir / "comparison.md").write_text(report)
    print("\n" + report)
    print(f"comparison: {workdir / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
