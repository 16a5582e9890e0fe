"""Command line: `python -m cure_jax.compare [--config FILE|NAME] [--methods a,b,...]
[--seeds 0,1,2] [--set key=value ...] [--workdir DIR]`.

Trains (or reuses) one teacher and one teacher-embedding cache, runs every method on the same
unlearning request, and writes `comparison.md`, `comparison.json` and `comparison.png` into the
workdir (default `runs/<config name>`). A method whose run finished is not rerun; an interrupted
one resumes from its checkpoints.

With `--seeds`, every method runs once per seed (`unlearn.seed`: the request draw and the
unlearning run; the teacher stays one) in `<workdir>/seed<k>/<method>`; each seed folder gets
its own comparison, and the workdir's shows the mean ± standard deviation over the seeds.
"""

from __future__ import annotations

import json
import pathlib
import sys

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import cli, methods, seeds, stages
from cure_jax import config as config_lib
from cure_jax.report import comparison_report, plot_comparison

# Table order: the reference first, then the papers' baselines, then the proposed methods.
ORDER = ("retrain", "finetune", "grad_ascent", "neggrad", "random_label", "boundary_shrink",
         "scrub", "bad_teacher", "unsir", "dispersion", "cure", "cure+dispersion")


def parse_args(argv):
    parser = cli.run_parser("python -m cure_jax.compare", __doc__)
    parser.add_argument("--methods", default="all",
                        help="comma-separated method names, or 'all' (default)")
    cli.add_seeds_argument(parser)
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


def seed_jobs(config, workdir: pathlib.Path, names: list[str],
              seed_list: tuple[int, ...]) -> tuple[stages.Job, ...]:
    """One job per seed and method, seed by seed (a seed's methods finish together):
    `<workdir>/seed<k>/<method>`."""
    return tuple(stages.Job(stages.with_method(seeds.with_seed(config, seed), name),
                            seeds.seed_folder(workdir, seed) / name, f"{name} (seed {seed})")
                 for seed in seed_list for name in names)


def write_comparison(results: dict, folder: pathlib.Path, *, title: str, note: str = "",
                     payload: dict | None = None) -> str:
    """Writes `comparison.md`, `comparison.json` (`payload`, default `results`) and
    `comparison.png` into `folder`; returns the markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.json").write_text(json.dumps(payload or results, indent=2) + "\n")
    plot_comparison(results, folder / "comparison.png", title=title)
    report = comparison_report(results, title=title, note=note)
    (folder / "comparison.md").write_text(report)
    return report


def aggregate_seeds(per_seed: dict[int, dict]) -> tuple[dict, dict]:
    """({method: aggregated metrics}, the JSON payload: the aggregate and every seed's runs)
    from {seed: {method: metrics}}."""
    names = list(next(iter(per_seed.values())))
    combined = {name: seeds.aggregate([runs[name] for runs in per_seed.values()])
                for name in names}
    payload = {"seeds": list(per_seed),
               "methods": {name: seeds.to_json(m) for name, m in combined.items()},
               "per_seed": {f"seed{seed}": runs for seed, runs in per_seed.items()}}
    return combined, payload


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config, workdir = cli.load_run_config(args)
        names = method_names(args.methods)
        seed_list = seeds.parse_seeds(args.seeds)
    except (config_lib.ConfigError, ValueError) as error:
        return cli.fail(error, 2)
    jobs = seed_jobs(config, workdir, names, seed_list or ())
    title = f"Unlearning methods on {config.name}"
    try:
        run = stages.start(config, workdir, names if seed_list is None else [], jobs)
        teacher_run = stages.teacher_stage(config, workdir, run.mesh, run.data)
        if seed_list is None:
            results = {}
            for name in names:
                print(f"\n=== {name} ===")
                results[name] = stages.unlearn_stage(stages.with_method(config, name), workdir,
                                                     run.mesh, run.data, teacher_run,
                                                     run.splits[name])
            report = write_comparison(results, workdir, title=title)
        else:
            per_seed = {seed: {} for seed in seed_list}
            for job, split in zip(jobs, run.job_splits, strict=True):
                print(f"\n=== {job.label} ===")
                per_seed[job.config.unlearn.seed][job.config.unlearn.method] = (
                    stages.unlearn_stage(job.config, workdir, run.mesh, run.data, teacher_run,
                                         split, folder=job.folder, label=job.label))
            for seed, results in per_seed.items():
                write_comparison(results, seeds.seed_folder(workdir, seed),
                                 title=f"{title}, seed {seed}")
            combined, payload = aggregate_seeds(per_seed)
            report = write_comparison(combined, workdir, title=title,
                                      note=seeds.note(seed_list), payload=payload)
    except cli.RUN_ERRORS as error:
        return cli.fail(error, 1)
    print("\n" + report)
    print(f"comparison: {workdir / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
