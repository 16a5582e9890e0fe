"""Command line: `python -m cure_jax.compare [--config FILE|NAME] [--methods a,b,...]
[--seeds 0,1,2] [--jobs N] [--set key=value ...] [--workdir DIR]`.

Trains (or reuses) one teacher and one teacher-embedding cache, runs every method on the same
unlearning request, and writes `comparison.md`, `comparison.json` and `comparison.png` into the
workdir (default `runs/<config name>`). A method whose run finished is not rerun; an interrupted
one resumes from its checkpoints.

With `--seeds`, every method runs once per seed (`unlearn.seed`: the request draw and the
unlearning run; the teacher stays one) in `<workdir>/seed<k>/<method>`; each seed folder gets
its own comparison, and the workdir's shows the mean ± standard deviation over the seeds.

With `--jobs N` (CPU only), N methods run at once after the teacher, in worker processes on
1/N of the cores each, every run's output in `<method folder>/log.txt` (cure_jax/job_pool.py).
"""

from __future__ import annotations

import json
import pathlib
import sys

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import cli, job_pool, methods, seeds, stages
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
    job_pool.add_argument(parser)
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


def comparison_jobs(config, workdir: pathlib.Path, names: list[str],
                    seed_list: tuple[int, ...] | None) -> tuple[stages.Job, ...]:
    """One job per method in `<workdir>/<method>`; with seeds, one per seed and method, seed by
    seed (a seed's methods finish together), in `<workdir>/seed<k>/<method>`."""
    if seed_list is None:
        return tuple(stages.Job(stages.with_method(config, name), workdir / name, name)
                     for name in names)
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


def job_plan(argv) -> job_pool.Plan:
    """The comparison's runs, from its arguments (`--jobs` workers read them too).

    Raises:
      ConfigError, ValueError: naming the argument or key at fault.
    """
    args = parse_args(argv)
    config, workdir = cli.load_run_config(args)
    jobs = comparison_jobs(config, workdir, method_names(args.methods),
                           seeds.parse_seeds(args.seeds))
    return job_pool.Plan(config, workdir, jobs, tuple(job.label for job in jobs))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        plan = job_plan(argv)
        seed_list = seeds.parse_seeds(args.seeds)
        job_pool.check_jobs(args.jobs)
    except (config_lib.ConfigError, ValueError) as error:
        return cli.fail(error, 2)
    config, workdir, jobs = plan.config, plan.workdir, plan.jobs
    title = f"Unlearning methods on {config.name}"
    try:
        run = stages.start(config, workdir, [], jobs)
        teacher_run = stages.teacher_stage(config, workdir, run.mesh, run.data)
        if args.jobs > 1:
            job_pool.run_pending("cure_jax.compare", argv, plan, args.jobs,
                                 progress=config.run.progress)
        runs = []
        for job, split in zip(jobs, run.job_splits, strict=True):
            print(f"\n=== {job.label} ===")
            runs.append(stages.unlearn_stage(job.config, workdir, run.mesh, run.data,
                                             teacher_run, split, folder=job.folder,
                                             label=job.label))
        if seed_list is None:
            report = write_comparison({job.config.unlearn.method: metrics
                                       for job, metrics in zip(jobs, runs, strict=True)},
                                      workdir, title=title)
        else:
            per_seed = {seed: {} for seed in seed_list}
            for job, metrics in zip(jobs, runs, strict=True):
                per_seed[job.config.unlearn.seed][job.config.unlearn.method] = metrics
            for seed, results in per_seed.items():
                write_comparison(results, seeds.seed_folder(workdir, seed),
                                 title=f"{title}, seed {seed}")
            combined, payload = aggregate_seeds(per_seed)
            report = write_comparison(combined, workdir, title=title,
                                      note=seeds.note(seed_list), payload=payload)
    except (*cli.RUN_ERRORS, job_pool.JobsFailed) as error:
        return cli.fail(error, 1)
    print("\n" + report)
    print(f"comparison: {workdir / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
