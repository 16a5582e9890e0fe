"""Command line: `python -m cure_jax.ablate [--config FILE|NAME] [--ablations A1,...|all]
[--seeds 0,1,2] [--jobs N] [--set key=value ...] [--workdir DIR]`.

The CURE paper's ablations (A1-A12, the table `ABLATIONS`): each is CURE with a few config
overrides (a loss term removed by a zero weight, another clusterer for the pseudo-labels,
another contrastive margin), run on the workdir's one teacher against full CURE, which is the
`cure` run that `compare` makes in the same folder (shared, not rerun). Writes `ablation.md`,
`ablation.json` and `ablation.png` into the workdir.

Folders: `<workdir>/cure` and `<workdir>/ablation/<A#>`, or with `--seeds` the same under each
`<workdir>/seed<k>/`. A finished run is reused, an interrupted one resumes. With `--jobs N`
(CPU only), N runs at once in worker processes (cure_jax/job_pool.py).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import NamedTuple

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import cli, job_pool, seeds, stages
from cure_jax import config as config_lib
from cure_jax.report import num_cell, pct_cell, plot_comparison, table


class Ablation(NamedTuple):
    """One row of the paper's ablation table, as CURE with config overrides."""

    key: str  # "A1" ... "A12"
    name: str  # short name for tables and plots
    change: str  # what changes against full CURE
    overrides: tuple[str, ...]  # `--set` assignments on top of the run's config
    paper_ues: str = ""  # the paper's UES for it, where the paper reports one


# Full CURE: the reference every ablation is compared with (the paper's CURE: UES 0.2290).
REFERENCE = Ablation("CURE", "full CURE", "all six terms, k-means, the default margin", (),
                     "0.2290")
# The paper's words: removing loss terms by zero weights, GMM and DBSCAN in place of k-means
# (UES 0.2189 and 0.1428) and other margins (UES 0.212-0.220, values not given). Which terms,
# in which combinations, and which margins is ours (docs/interpretations.md).
ABLATIONS = (
    Ablation("A1", "no L_pl", "pseudo-label cross-entropy removed", ("cure.w_pl=0",)),
    Ablation("A2", "no L_cosf", "forget cosine removed", ("cure.w_cosf=0",)),
    Ablation("A3", "no L_con", "contrastive hinges removed", ("cure.w_con=0",)),
    Ablation("A4", "no L_cosr", "retain cosine removed", ("cure.w_cosr=0",)),
    Ablation("A5", "no L_fm", "feature matching removed", ("cure.w_fm=0",)),
    Ablation("A6", "no L_fd", "feature distribution KL removed", ("cure.w_fd=0",)),
    Ablation("A7", "forget terms only", "all three retain terms removed",
             ("cure.w_cosr=0", "cure.w_fm=0", "cure.w_fd=0")),
    Ablation("A8", "GMM", "Gaussian mixture (diagonal) pseudo-labels in place of k-means",
             ("cure.clustering=gmm",), "0.2189"),
    Ablation("A9", "DBSCAN", "DBSCAN pseudo-labels in place of k-means",
             ("cure.clustering=dbscan",), "0.1428"),
    Ablation("A10", "margin 0.1", "contrastive margin m = 0.1", ("cure.margin=0.1",),
             "0.212-0.220 (margins varied)"),
    Ablation("A11", "margin 0.5", "contrastive margin m = 0.5", ("cure.margin=0.5",),
             "0.212-0.220 (margins varied)"),
    Ablation("A12", "margin 0.7", "contrastive margin m = 0.7", ("cure.margin=0.7",),
             "0.212-0.220 (margins varied)"),
)
BY_KEY = {ablation.key: ablation for ablation in ABLATIONS}


def parse_args(argv):
    parser = cli.run_parser("python -m cure_jax.ablate", __doc__)
    parser.add_argument("--ablations", default="all",
                        help="comma-separated keys (A1,...,A12), or 'all' (default)")
    cli.add_seeds_argument(parser)
    job_pool.add_argument(parser)
    return parser.parse_args(argv)


def select(text: str) -> tuple[Ablation, ...]:
    """The ablations named by `--ablations`, in table order; raises ValueError naming the valid
    keys."""
    if text == "all":
        return ABLATIONS
    keys = [key.strip().upper() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in BY_KEY]
    if unknown or not keys:
        raise ValueError(f"unknown ablation(s) {', '.join(unknown) or '(none given)'}; valid: "
                         f"{', '.join(BY_KEY)}, or all")
    return tuple(ablation for ablation in ABLATIONS if ablation.key in keys)


def ablation_config(config, ablation: Ablation, seed: int | None):
    """CURE with the ablation's overrides (and the seed, when given) on top of `config`.

    Raises:
      ConfigError: an override that the config does not accept.
    """
    config = stages.with_method(config if seed is None else seeds.with_seed(config, seed), "cure")
    return config_lib.apply_overrides(config, list(ablation.overrides))


def ablation_folder(workdir: pathlib.Path, ablation: Ablation, seed: int | None) -> pathlib.Path:
    """`<seed folder>/cure` for full CURE (the folder `compare` uses), else
    `<seed folder>/ablation/<key>`."""
    base = seeds.seed_folder(workdir, seed)
    return base / "cure" if ablation is REFERENCE else base / "ablation" / ablation.key


def plan(config, workdir: pathlib.Path, chosen: tuple[Ablation, ...],
         seed_list: tuple[int, ...] | None) -> tuple[tuple[Ablation, int | None, stages.Job], ...]:
    """(ablation, seed, job) for full CURE and each chosen ablation, seed by seed."""
    out = []
    for seed in seed_list or (None,):
        for ablation in (REFERENCE, *chosen):
            label = ablation.key + ("" if seed is None else f" (seed {seed})")
            job = stages.Job(ablation_config(config, ablation, seed),
                             ablation_folder(workdir, ablation, seed), label)
            out.append((ablation, seed, job))
    return tuple(out)


def paired_ues_change(runs: list[dict], references: list[dict]) -> seeds.Spread:
    """UES of an ablation minus full CURE's, seed by seed (the same request in both), over the
    seeds: a paired difference, free of the spread that the requests themselves cause."""
    return seeds.paired_difference([run["ues"] for run in runs],
                                   [ref["ues"] for ref in references])


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """{key: metrics aggregated over the seeds (a single seed's as they are), with
    `ues_change`: UES minus full CURE's, paired by seed}."""
    references = results[REFERENCE.key]
    out = {}
    for key, runs in results.items():
        merged = seeds.aggregate(runs) if len(runs) > 1 else dict(runs[0])
        if key != REFERENCE.key:
            change = paired_ues_change(runs, references)
            merged["ues_change"] = change if len(runs) > 1 else change.mean
        out[key] = merged
    return out


def ablation_report(summary: dict[str, dict], chosen: tuple[Ablation, ...], *, title: str,
                    note: str = "") -> str:
    """ablation.md: one row per ablation beside full CURE and the paper's UES."""
    header = ["", "ablation", "what changes", "forget acc", "retain acc", "UES",
              "UES - full CURE", "verification", "forget mAP", "retain mAP", "paper's UES"]
    rows = []
    for ablation in (REFERENCE, *chosen):
        m = summary[ablation.key]
        rows.append([ablation.key, ablation.name, ablation.change,
                     pct_cell(m.get("forget_acc_after")), pct_cell(m.get("retain_acc_after")),
                     num_cell(m.get("ues")), num_cell(m.get("ues_change")),
                     pct_cell(m.get("verification_after")), pct_cell(m.get("forget_map_after")),
                     pct_cell(m.get("retain_map_after")), ablation.paper_ues or "-"])
    first = summary[REFERENCE.key]
    before = "Before unlearning: " + ", ".join(
        f"{what} {pct_cell(first.get(key))}" for what, key in (
            ("forget acc", "forget_acc_before"), ("retain acc", "retain_acc_before"),
            ("verification", "verification_before"), ("forget mAP", "forget_map_before"),
            ("retain mAP", "retain_map_before"))) + "."
    return "\n".join([
        f"# {title}",
        "",
        "CURE with one change at a time, on one teacher. Accuracies in %, against the teacher's "
        "class centres on the training images; UES with alpha = "
        f"{first.get('ues_alpha', 0.5)}; 'UES - full CURE' pairs each seed's run with full "
        "CURE on the same request. The paper's UES (CASIA-WebFace, IR-100) is for reading the "
        f"direction of a change, not its size. {note}".rstrip(),
        "",
        before,
        "",
        table(header, rows),
        "",
        "![ablations: forget against retain accuracy and retrieval mAP](ablation.png)",
        "",
    ])


def labels_of(planned) -> tuple[str, ...]:
    """Each planned run's name in messages and report titles."""
    return tuple(f"{job.label} {ablation.name}" for ablation, _, job in planned)


def job_plan(argv) -> job_pool.Plan:
    """The ablation's runs, from its arguments (`--jobs` workers read them too).

    Raises:
      ConfigError, ValueError: naming the argument or key at fault.
    """
    args = parse_args(argv)
    config, workdir = cli.load_run_config(args)
    planned = plan(config, workdir, select(args.ablations), seeds.parse_seeds(args.seeds))
    return job_pool.Plan(config, workdir, tuple(job for _, _, job in planned),
                         labels_of(planned))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        config, workdir = cli.load_run_config(args)
        chosen = select(args.ablations)
        seed_list = seeds.parse_seeds(args.seeds)
        planned = plan(config, workdir, chosen, seed_list)
        job_pool.check_jobs(args.jobs)
    except (config_lib.ConfigError, ValueError) as error:
        return cli.fail(error, 2)
    jobs, labels = tuple(job for _, _, job in planned), labels_of(planned)
    try:
        run = stages.start(config, workdir, [], jobs)
        teacher_run = stages.teacher_stage(config, workdir, run.mesh, run.data)
        if args.jobs > 1:
            job_pool.run_pending("cure_jax.ablate", argv,
                                 job_pool.Plan(config, workdir, jobs, labels), args.jobs,
                                 progress=config.run.progress)
        results: dict[str, list[dict]] = {}
        for (ablation, _, job), label, split in zip(planned, labels, run.job_splits,
                                                    strict=True):
            print(f"\n=== {job.label}: {ablation.name} ===")
            results.setdefault(ablation.key, []).append(stages.unlearn_stage(
                job.config, workdir, run.mesh, run.data, teacher_run, split, folder=job.folder,
                label=label))
    except (*cli.RUN_ERRORS, job_pool.JobsFailed) as error:
        return cli.fail(error, 1)
    summary = summarize(results)
    title = f"CURE ablations on {config.name}"
    note = "" if seed_list is None else seeds.note(seed_list)
    report = ablation_report(summary, chosen, title=title, note=note)
    (workdir / "ablation.md").write_text(report)
    payload = {"seeds": list(seed_list) if seed_list else None,
               "ablations": {a.key: {"name": a.name, "change": a.change,
                                     "overrides": list(a.overrides), "paper_ues": a.paper_ues}
                             for a in (REFERENCE, *chosen)},
               "summary": {key: seeds.to_json(m) for key, m in summary.items()},
               "runs": results}
    (workdir / "ablation.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot_comparison(summary, workdir / "ablation.png", title=title)
    print("\n" + report)
    print(f"ablation: {workdir / 'ablation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
