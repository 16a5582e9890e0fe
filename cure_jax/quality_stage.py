"""Quality-aware unlearning (SPEC section 6, the CURE paper's Table 3): the stage behind
`python -m cure_jax.quality_unlearn`.

The teacher scores every training image with a label-free quality score (`cure_jax.quality`,
`quality.score`); the images below the `quality.percentile` of the score, across all people and
without labels, are forgotten with the run's method (an image-level request: the retain set is
every other training image). Two references: forgetting as many images drawn at random, and
forgetting nothing (the teacher). Verification is measured over all pairs and over the pairs of
low and high quality (a pair's quality is the lower of its two images' scores, split at the
median); where the data records each image's true degradation (the synthetic faces), also over
the pairs split by that.

Layout in the run folder:
  quality/scores_<score>.npz       the teacher's scores of the training and verification images
  quality/seed<k>/<variant>/       one run per seed and variant ("low_quality", "random"):
                                   config.json, the method's checkpoints, metrics.json
  quality/quality_unlearning.md    the table (mean ± std over the seeds), with .json and .png

Every run resumes and a finished one is reused, as in `compare`.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from cure_jax import methods, quality, seeds, stages  # noqa: E402
from cure_jax.embeddings import embed_pass, save_arrays  # noqa: E402
from cure_jax.evaluation import identity_accuracy, unit  # noqa: E402
from cure_jax.metrics.verification import contiguous_folds, pair_distances, verify  # noqa: E402
from cure_jax.report import axis_limits, num_cell, pct_cell, table  # noqa: E402
from data_pipelines.pipelines import SubsetSource  # noqa: E402

VARIANTS = ("low_quality", "random")
# Pair subsets: metric-name suffix -> what the table calls it.
SUBSETS = {"": "all pairs", "_low_quality": "low-quality pairs",
           "_high_quality": "high-quality pairs", "_degraded": "degraded pairs (true)",
           "_clean": "clean pairs (true)"}


class QualityScores(NamedTuple):
    """The teacher's quality score of each image, higher meaning better."""

    train: np.ndarray  # float [N], in `data.train_indices` order
    verification: np.ndarray | None  # float [V] of the verification images, or None


def teacher_scores(config, teacher_run: stages.TeacherRun, data, mesh,
                   folder: pathlib.Path) -> QualityScores:
    """The teacher's scores (`quality.score`), computed once and kept in `folder`."""
    name = config.quality.score
    path = folder / f"scores_{name}.npz"
    sizes = {"train": len(data.train_indices),
             "verification": 0 if data.verification is None else len(data.verification.source)}
    if path.exists():
        with np.load(path) as cached:
            if {key: len(cached[key]) for key in cached.files} == {
                    key: size for key, size in sizes.items() if size}:
                return QualityScores(cached["train"], cached["verification"]
                                     if "verification" in cached.files else None)
    sources = {"train": SubsetSource(data.records, data.train_indices)}
    if data.verification is not None:
        sources["verification"] = data.verification.source
    if name == "norm":
        # The raw embeddings are cached already: the norm needs no pass over the images.
        scores = {key: np.linalg.norm(teacher_run.embeddings.sets[key][0], axis=1)
                  for key in sources}
    else:
        score = quality.make_quality_fn(name, teacher_run.graphs.eval)
        backbone = teacher_run.backbone
        scores = {key: quality.score_source(score, backbone.params, backbone.batch_stats, source,
                                            batch_size=config.eval.batch_size, mesh=mesh,
                                            progress=config.run.progress,
                                            desc=f"{name}: {key} images")
                  for key, source in sources.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_arrays(path, scores)
    return QualityScores(scores["train"], scores.get("verification"))


def forget_rows(scores_N: np.ndarray, variant: str, *, percentile: float,
                seed: int) -> np.ndarray:
    """Positions in `data.train_indices` of the images to forget: those scored below the
    `percentile` ("low_quality"), or as many drawn at random with `seed` ("random")."""
    low = np.flatnonzero(scores_N < np.percentile(scores_N, percentile))
    if variant == "low_quality":
        return low
    if variant == "random":
        return np.sort(np.random.default_rng(seed).choice(len(scores_N), len(low), replace=False))
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")


def pair_subsets(verification, quality_V: np.ndarray | None,
                 degradation_V: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{metric suffix (`SUBSETS`): bool [P] mask of the pairs}: all pairs; the pairs whose lower
    quality is below its median and the rest; with `degradation_V` (0 = clean), the pairs whose
    worse image is more degraded than the median pair's and the rest."""
    a, b = verification.idx_a, verification.idx_b
    out = {"": np.ones(len(a), bool)}
    if quality_V is not None:
        pair_quality = np.minimum(quality_V[a], quality_V[b])
        low = pair_quality < np.median(pair_quality)
        out.update({"_low_quality": low, "_high_quality": ~low})
    if degradation_V is not None:
        pair_degradation = np.maximum(degradation_V[a], degradation_V[b])
        degraded = pair_degradation > np.median(pair_degradation)
        out.update({"_degraded": degraded, "_clean": ~degraded})
    return out


def subset_verification(plain_VxD: np.ndarray, mirrored_VxD: np.ndarray | None, verification,
                        subsets: dict[str, np.ndarray]) -> dict:
    """Verification accuracy over each subset of the pairs (each pair keeps its fold), with the
    spread and TAR@FAR=1e-3 over all pairs; NaN for a subset whose folds lack a kind of pair."""
    raw = plain_VxD if mirrored_VxD is None else plain_VxD + mirrored_VxD
    embeddings = unit(raw)
    dist = pair_distances(embeddings[verification.idx_a], embeddings[verification.idx_b])
    folds = (contiguous_folds(len(dist), 10) if verification.folds is None
             else np.asarray(verification.folds))
    out = {}
    for suffix, mask in subsets.items():
        try:
            result = verify(dist[mask], verification.issame[mask], folds_P=folds[mask])
        except ValueError:
            out[f"verification_accuracy{suffix}"] = float("nan")
            continue
        out[f"verification_accuracy{suffix}"] = result.accuracy
        if suffix == "":
            out.update(verification_std=result.accuracy_std, tar_at_far_1e_3=result.tar_at_far)
    return out


def model_metrics(sets: dict, data, centres_CxD: np.ndarray, subsets: dict,
                  rows: dict[str, np.ndarray]) -> dict:
    """One model's figures from its raw embeddings `sets` ({"train", "holdout", "verification":
    (plain, mirrored or None)}): verification per pair subset, held-out identity accuracy, and
    the identity accuracy of the training images at each of `rows` ({name: positions})."""
    metrics = {}
    if data.verification is not None and subsets:
        metrics.update(subset_verification(*sets["verification"], data.verification, subsets))
    if len(data.holdout_indices):
        metrics["holdout_accuracy"] = identity_accuracy(
            sets["holdout"][0], data.records.labels[data.holdout_indices], centres_CxD)
    train_labels = data.records.labels[data.train_indices]
    for name, positions in rows.items():
        metrics[f"{name}_accuracy"] = identity_accuracy(sets["train"][0][positions],
                                                        train_labels[positions], centres_CxD)
    return metrics


def student_sets(teacher_run: stages.TeacherRun, student, data, config, mesh) -> dict:
    """The student's raw embeddings of the training, held-out and verification images."""
    def embed(source, mirrored, name):
        return embed_pass(teacher_run.embed, student.params, student.batch_stats, source,
                          batch_size=config.eval.batch_size, mesh=mesh, mirrored=mirrored,
                          progress=config.run.progress, desc=f"student: {name}")

    sets = {"train": (embed(SubsetSource(data.records, data.train_indices), False, "train"),
                      None),
            "holdout": (embed(SubsetSource(data.records, data.holdout_indices), False,
                              "held-out"), None)}
    if data.verification is not None:
        source = data.verification.source
        sets["verification"] = (embed(source, False, "verification"),
                                embed(source, True, "verification (mirrored)")
                                if config.eval.flip else None)
    return sets


class Job(NamedTuple):
    """One unlearning run: a variant under a seed."""

    variant: str
    seed: int
    config: object  # the run's config with `unlearn.seed` = seed (before sizing)
    folder: pathlib.Path


def jobs(config, workdir: pathlib.Path, seed_list: tuple[int, ...]) -> tuple[Job, ...]:
    return tuple(Job(variant, seed, seeds.with_seed(config, seed),
                     workdir / "quality" / f"seed{seed}" / variant)
                 for seed in seed_list for variant in VARIANTS)


def folder_keys(config) -> tuple[str, ...]:
    """The keys a finished variant run depends on."""
    return (*stages.method_keys(config.unlearn.method), "quality.")


def sized(config, num_forget: int, mesh):
    """`config` sized to forgetting `num_forget` images (`stages.sized_for_images`)."""
    clusters = config.quality.forget_clusters or config.baselines.clusters
    return stages.sized_for_images(config, num_forget, mesh, steps=config.quality.steps,
                                   max_clusters=clusters)


def check_request(config):
    """A `stages.start` check: the request of about `percentile` of the training images, sized,
    passes the method's own check."""
    def check(data, mesh) -> None:
        total = len(data.train_indices)
        num_forget = int(total * config.quality.percentile / 100)
        run_config = sized(config, max(num_forget, 1), mesh)
        spec = methods.get_method(config.unlearn.method)
        if spec.check is not None:
            spec.check(run_config, num_forget, total - num_forget)
    return check


def run_job(job: Job, workdir: pathlib.Path, mesh, data, teacher_run: stages.TeacherRun,
            scores: QualityScores, subsets: dict, centres_CxD: np.ndarray) -> dict:
    """Runs (or resumes, or reuses) one variant and returns its metrics."""
    metrics_path = job.folder / "metrics.json"
    if metrics_path.exists():
        print(f"{job.variant} (seed {job.seed}): finished earlier, reusing {metrics_path}")
        return json.loads(metrics_path.read_text())
    stages.write_folder_config(job.folder, job.config)
    rows = forget_rows(scores.train, job.variant, percentile=job.config.quality.percentile,
                       seed=job.seed)
    config = sized(job.config, len(rows), mesh)
    name = config.unlearn.method
    print(f"\n=== {job.variant} (seed {job.seed}): {name} forgets {len(rows)} of "
          f"{len(scores.train)} training images, {config.student.epochs} epochs of "
          f"{config.student.batch_size} ===")
    split = stages.image_split(data, data.train_indices[rows])
    context = stages.unlearn_context(config, job.folder / name, mesh, data, teacher_run, split)
    start = time.perf_counter()
    student = methods.get_method(name).run(context)
    seconds = time.perf_counter() - start
    kept = np.setdiff1d(np.arange(len(scores.train)), rows)
    row_sets = {"forgotten": rows, "kept": kept}
    metrics = model_metrics(student_sets(teacher_run, student, data, config, mesh), data,
                            centres_CxD, subsets, row_sets)
    before = model_metrics(teacher_run.embeddings.sets, data, centres_CxD, {}, row_sets)
    metrics.update(
        variant=job.variant, method=name, images_forgotten=len(rows),
        forgotten_accuracy_before=before["forgotten_accuracy"],
        kept_accuracy_before=before["kept_accuracy"], unlearn_seconds=seconds,
        **selection_figures(data, rows))
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def degradation_of(source) -> np.ndarray | None:
    """The recorded degradation of each record (synthetic faces), else None."""
    extras = getattr(source, "extras", {}) or {}
    return np.asarray(extras["degradation"]) if "degradation" in extras else None


def selection_figures(data, rows: np.ndarray) -> dict:
    """What the forgotten images are, where the data knows it: their mean true degradation."""
    degradation = degradation_of(data.records)
    if degradation is None:
        return {}
    return {"forgotten_degradation": float(np.mean(degradation[data.train_indices[rows]]))}


def score_validity(data, scores: QualityScores) -> dict:
    """Spearman correlation of the score with minus the true degradation, over the training
    images (where the data records it)."""
    degradation = degradation_of(data.records)
    if degradation is None:
        return {}
    rho = spearmanr(scores.train, -degradation[data.train_indices]).statistic
    return {"score_spearman_train": float(rho),
            "train_degradation": float(np.mean(degradation[data.train_indices]))}


def run(config, workdir: pathlib.Path, seed_list: tuple[int, ...]) -> tuple[str, dict]:
    """The whole experiment; returns (the report as Markdown, the figures as JSON)."""
    job_list = jobs(config, workdir, seed_list)
    for job in job_list:
        stages.check_folder(job.folder, job.config, folder_keys(job.config))
    start = stages.start(config, workdir, [], checks=(check_request(config),))
    teacher_run = stages.teacher_stage(config, workdir, start.mesh, start.data)
    data = start.data
    folder = workdir / "quality"
    scores = teacher_scores(config, teacher_run, data, start.mesh, folder)
    subsets = {}
    if data.verification is not None:
        subsets = pair_subsets(data.verification, scores.verification,
                               degradation_of(data.verification.source))
    centres = np.asarray(teacher_run.teacher.class_centres())
    per_variant = {variant: [] for variant in VARIANTS}
    for job in job_list:
        per_variant[job.variant].append(run_job(job, workdir, start.mesh, data, teacher_run,
                                                scores, subsets, centres))
    teacher = model_metrics(teacher_run.embeddings.sets, data, centres, subsets, {})
    results = {"teacher": teacher, **{variant: seeds.aggregate(runs)
                                      for variant, runs in per_variant.items()}}
    payload = {"config": config.name, "method": config.unlearn.method,
               "score": config.quality.score, "percentile": config.quality.percentile,
               "seeds": list(seed_list), **score_validity(data, scores),
               "teacher": teacher,
               **{variant: seeds.to_json(m) for variant, m in results.items()
                  if variant != "teacher"},
               "per_seed": per_variant}
    report = quality_report(results, payload, subsets)
    (folder / "quality_unlearning.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / "quality_unlearning.md").write_text(report)
    plot_results(results, subsets, folder / "quality_unlearning.png",
                 title=f"quality-aware unlearning on {config.name}")
    return report, payload


ROW_NAMES = {"teacher": "forget nothing (teacher)",
             "low_quality": "forget the low-quality images",
             "random": "forget as many random images"}


def quality_report(results: dict, payload: dict, subsets: dict) -> str:
    """The experiment's tables as Markdown."""
    suffixes = [s for s in SUBSETS if s in subsets]
    header = ["model", "images forgotten", *(SUBSETS[s] for s in suffixes), "TAR@FAR=1e-3",
              "held-out acc", "forgotten images acc (before -> after)"]
    rows = []
    for name, m in results.items():
        forgotten = ("-" if name == "teacher" else
                     f"{pct_cell(m['forgotten_accuracy_before'])} -> "
                     f"{pct_cell(m['forgotten_accuracy'])}")
        rows.append([ROW_NAMES[name], "0" if name == "teacher" else num_cell(
            m["images_forgotten"], 0), *(pct_cell(m.get(f"verification_accuracy{s}"))
                                         for s in suffixes),
            pct_cell(m.get("tar_at_far_1e_3")), pct_cell(m.get("holdout_accuracy")), forgotten])
    seeds_text = ", ".join(map(str, payload["seeds"]))
    over = (f"mean ± standard deviation over the seeds {seeds_text}" if len(payload["seeds"]) > 1
            else f"one seed, {seeds_text}")
    parts = [f"# Quality-aware unlearning on {payload['config']}", "",
             f"{payload['method']} forgets the training images whose `{payload['score']}` "
             f"score (the teacher's) is below its {payload['percentile']:g}th percentile, "
             "across all people and without labels, or as many images drawn at random. "
             "Verification over all pairs and over the pairs of low and high quality (the lower "
             f"of a pair's two scores, split at the median). Values in %; {over} "
             "(unlearn.seed: the unlearning run and the random draw).", "", table(header, rows)]
    if "score_spearman_train" in payload:
        low, rand = results["low_quality"], results["random"]
        parts += ["", f"The score against the renderer's recorded degradation on the training "
                  f"images: Spearman {payload['score_spearman_train']:.3f}. Mean degradation of "
                  f"all training images {payload['train_degradation']:.3f}; of the images "
                  f"forgotten for low quality {num_cell(low['forgotten_degradation'], 3)}, of "
                  f"the random ones {num_cell(rand['forgotten_degradation'], 3)}. Degraded / "
                  "clean pairs (true): split at the median of the pair's worse recorded "
                  "degradation."]
    parts += ["", "![verification by pair quality](quality_unlearning.png)", ""]
    return "\n".join(parts)


def plot_results(results: dict, subsets: dict, path: pathlib.Path, *, title: str) -> None:
    """Verification accuracy per pair subset, one bar per model, error bars over the seeds."""
    suffixes = [s for s in SUBSETS if s in subsets]
    if not suffixes:
        return
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(suffixes), 4))
    width = 0.8 / len(results)
    centres, errors = [], []
    for k, (name, m) in enumerate(results.items()):
        values = [100 * seeds.mean_of(m.get(f"verification_accuracy{s}", np.nan))
                  for s in suffixes]
        spread = [100 * seeds.std_of(m.get(f"verification_accuracy{s}", 0.0)) for s in suffixes]
        positions = np.arange(len(suffixes)) + (k - (len(results) - 1) / 2) * width
        ax.bar(positions, values, width, yerr=spread, capsize=3, label=ROW_NAMES[name])
        centres += values
        errors += spread
    finite = [(c, e) for c, e in zip(centres, errors, strict=True) if np.isfinite(c)]
    if finite:
        low, high = axis_limits([c for c, _ in finite], [e for _, e in finite])
        ax.set_ylim(low, high)
    ax.set_xticks(np.arange(len(suffixes)), [SUBSETS[s] for s in suffixes], fontsize=8)
    ax.set_ylabel("verification accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(results))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
