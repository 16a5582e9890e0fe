"""Command line: `python -m cure_jax.compare [--config FILE|NAME] [--methods a,b,...]
[--set key=value ...] [--workdir DIR]`.

Trains (or reuses) one teacher and one teacher-embedding cache, runs every method on the same
unlearning request, and writes `comparison.md`, `comparison.json` and `comparison.png` into the
workdir (default `runs/<config name>`). A method whose run finished is not rerun; an interrupted
one resumes from its checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import methods, sharding
from cure_jax.loop import NonFiniteLossError
from cure_jax.report import comparison_report, plot_comparison
from cure_jax.train import (
    TEACHER_KEYS,
    prepare_folder,
    request_split,
    run_teacher_stage,
    run_unlearn_stage,
)
from data_pipelines.datasets import load_face_data

# Table order: the reference first, then the papers' baselines, then the proposed methods.
ORDER = ("retrain", "finetune", "grad_ascent", "neggrad", "random_label", "boundary_shrink",
         "scrub", "bad_teacher", "unsir", "dispersion", "cure", "cure+dispersion")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m cure_jax.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default",
                        help="a configs/<name>.py file path, or a bundled config name")
    parser.add_argument("--methods", default="all",
                        help="comma-separated method names, or 'all' (default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field, e.g. scrub.lr=1e-3")
    parser.add_argument("--workdir", default=None, help="run folder (default: runs/<config name>)")
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


def with_method(config: config_lib.Config, name: str) -> config_lib.Config:
    return dataclasses.replace(config, unlearn=dataclasses.replace(config.unlearn, method=name))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
        names = method_names(args.methods)
    except (config_lib.ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / config.name)
    try:
        prepare_folder(workdir, config, only=TEACHER_KEYS)
        mesh = sharding.make_mesh(config.run.num_devices)
        data = load_face_data(config.data, progress=config.run.progress)
        # Every method's request is checked before anything trains.
        splits = {name: request_split(with_method(config, name), data) for name in names}
        teacher = run_teacher_stage(config, workdir, mesh, data)
        results = {}
        for name in names:
            print(f"\n=== {name} ===")
            results[name] = run_unlearn_stage(with_method(config, name), workdir, mesh, data,
                                              teacher, splits[name])
    except (config_lib.ConfigError, NonFiniteLossError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    (workdir / "comparison.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_comparison(results, workdir / "comparison.png", title=f"methods on {config.name}")
    report = comparison_report(results, title=f"Unlearning methods on {config.name}")
    (workdir / "comparison.md").write_text(report)
    print("\n" + report)
    print(f"comparison: {workdir / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
