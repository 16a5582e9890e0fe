"""Validates the label-free quality scores on the synthetic faces, whose true quality is known.

The renderer records a degradation level in [0, 1] per image (blur, noise, low light, contrast
loss and, above 0.5, occlusion, all growing with the square of the level). Each score of
`cure_jax.quality` is computed with a run's trained teacher and compared with image quality
(minus the level) by Spearman correlation on:
  - the teacher's training images, held-out images of the same people and images of people it
    never saw, at the levels the renderer draws (Beta(1, 4): three in four below 0.3, where the
    effects are too faint to change recognition);
  - new images of the training people and of unseen people rendered at levels drawn uniformly
    in [0, 1] ("*_uniform"), where the level spans visible degradations.
For the training people, the recognition utility of each image (cosine of its embedding to its
own class centre) is a second ground truth: its correlation with minus the level is the ceiling
a recognition-based score can be expected to reach, and each score's correlation with it is
reported too. A last study renders the same unseen faces with one kind of degradation at a time,
at levels 0, 0.25, 0.5, 0.75 and 1 (occlusion: off or on). Time per image is measured after
compilation (batches of `--batch-size`, input pipeline included).

    python -m cure_jax.train --stage teacher --workdir /tmp/runs/default
    python tools/quality_validate.py --workdir /tmp/runs/default

Writes `quality_validation.json`, `quality_validation.png` and `quality_validation.npz` (every
image's score and level, per set) into the run folder (or --out).

`--model` scores with another backbone on the same sets: a pretrained file (`.onnx` or arcface_torch
`.pth`, looked up as `model.pretrained` is, e.g. OpenCV's SFace), imported without fine-tuning, or
the exported teacher of another run folder (`teacher/export.json`, e.g. SFace fine-tuned on LFW).
The images are rendered as for the run's own teacher and resized to the model's input side as a
folder source resizes (PIL bilinear). Such a model has no class centres of the synthetic training
people, so the utility reference is skipped; so is any score that does not apply to it (the
reason is printed and written). Its verification on the run's synthetic pairs (flip test) is
reported beside. Files: `quality_validation_<model>.json`, `.png` and `.npz`.

    python tools/quality_validate.py --workdir /tmp/runs/default \
        --model sface/face_recognition_sface_2021dec_int8bq.onnx

`--rank-mean a,b` also reports the score that averages the ranks of scores a and b within each set
(equal weights, fixed beforehand: nothing is fitted to the levels); give it several times for
several such scores. Scores that see different degradations can together follow quality better
than either; the per-kind study is not run for them. An entry `FILE.npz:score` takes a score that
an earlier run of this tool saved on the same sets (same run folder, `--seed` and `--max-images`;
the levels are checked), e.g. another model's:

    python tools/quality_validate.py --workdir /tmp/runs/default --only serfiq \
        --model sface/face_recognition_sface_2021dec_int8bq.onnx --out /tmp/sface
    python tools/quality_validate.py --workdir /tmp/runs/default --only grafiqs@image,norm \
        --rank-mean grafiqs@image,norm,/tmp/sface/quality_validation_$NAME.npz:serfiq

(`$NAME`: the model file's stem, `face_recognition_sface_2021dec_int8bq`.)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import NamedTuple

import jax
import matplotlib
import numpy as np
from PIL import Image
from scipy.stats import rankdata, spearmanr

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import quality, sharding
from cure_jax.embeddings import embed_pass, make_embed_fn
from cure_jax.evaluation import verification_metrics
from cure_jax.models import pretrained
from cure_jax.models.backbone import Backbone, split_model
from cure_jax.models.convert.onnx_import import import_onnx
from cure_jax.models.convert.torch_state import load_arcface_iresnet
from cure_jax.teacher import train_teacher
from data_pipelines.datasets import load_face_data
from data_pipelines.pipelines import ArraySource, SubsetSource, materialize, normalize
from data_pipelines.sources.synthetic import identity_params, nuisance_params, render_face

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The nuisance keys that carry each kind of degradation (data_pipelines/sources/synthetic.py).
KIND_KEYS = {"blur": ("blur",), "noise": ("extra_noise",), "low_light": ("low_light",),
             "contrast": ("contrast",), "occlusion": ("occlude", "occ_box", "occ_colour")}
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Global ids of the people of the per-kind study and of the uniform-level unseen set: disjoint
# from training (0...) and verification (1,000,000...) people.
KIND_STUDY_OFFSET = 3_000_000
UNIFORM_UNSEEN_OFFSET = 4_000_000
# Image numbers of the uniform-level renders of training people: far past their own images.
UNIFORM_IMAGE_OFFSET = 100_000


def _train_command(workdir: pathlib.Path) -> str:
    return f"python -m cure_jax.train --stage teacher --workdir {workdir}"


def load_run(workdir: pathlib.Path, *, progress: bool = True):
    """(config, data, mesh) of a run folder (its config.json).

    Raises:
      SystemExit: with the command to run when the folder has no config.json.
    """
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise SystemExit(f"{config_path} not found; train a teacher first: "
                         f"{_train_command(workdir)}")
    config = config_lib.from_dict(json.loads(config_path.read_text()))
    mesh = sharding.make_mesh(config.run.num_devices)
    return config, load_face_data(config.data, progress=progress), mesh


def load_teacher(workdir: pathlib.Path, *, progress: bool = True):
    """(config, data, teacher, mesh) of the finished teacher in a run folder.

    Raises:
      SystemExit: with the command to run when the folder holds no finished teacher.
    """
    if (workdir / "config.json").exists() and not (workdir / "teacher" / "eval.json").exists():
        raise SystemExit(f"the teacher in {workdir / 'teacher'} is not finished; finish it: "
                         f"{_train_command(workdir)} (with the --config it was started with)")
    config, data, mesh = load_run(workdir, progress=progress)
    teacher = train_teacher(config, data, workdir, mesh)  # finished: restores the last step
    return config, data, teacher, mesh


def load_model(spec: str) -> tuple[dict, object]:
    """(description, backbone module) of `--model`: a run folder's exported teacher, or a
    pretrained file as `model.pretrained` names one.

    Raises:
      SystemExit: a run folder without an exported teacher, or no such file.
    """
    folder = pathlib.Path(spec).expanduser()
    if folder.is_dir():
        record = folder / "teacher" / "export.json"
        if not record.exists():
            raise SystemExit(f"{folder} holds no exported teacher ({record} not found); give a "
                             "run folder whose teacher is finished, or a pretrained file")
        # The file beside the record: the folder may have moved since the run wrote it.
        path = record.parent / pathlib.Path(json.loads(record.read_text())["teacher_file"]).name
        description = {"kind": "run teacher", "run": str(folder), "file": str(path),
                       "name": folder.name}
    else:
        try:
            path = pretrained.resolve(spec)
        except pretrained.PretrainedError as err:
            raise SystemExit(str(err)) from None
        description = {"kind": "pretrained file, no fine-tuning", "file": str(path),
                       "name": path.stem}
    if not path.is_file():
        raise SystemExit(f"{path} not found")
    module = import_onnx(path) if path.suffix.lower() == ".onnx" else load_arcface_iresnet(path)
    description.update(input_size=int(module.input_size),
                       embedding_dim=int(module.embedding_dim))
    return description, module


def resized(source, size: int) -> ArraySource:
    """Every record of `source` in memory, its image resized to `size` x `size` as a folder
    source resizes (PIL bilinear); labels kept."""
    loaded = materialize(source, desc="resizing", progress=False)
    images = loaded.images
    if images.shape[1:3] != (size, size):
        images = np.stack([np.asarray(Image.fromarray(image).resize(
            (size, size), Image.Resampling.BILINEAR)) for image in images])
    return ArraySource(images, loaded.labels)


def score_specs(*, passes: int, rate: float) -> dict[str, dict]:
    """Every score to validate: name -> options of `quality.make_quality_fn`."""
    specs = {"serfiq": {"name": "serfiq", "passes": passes, "rate": rate}}
    for target in quality.GRAFIQS_TARGETS:
        specs[f"grafiqs@{target}"] = {"name": "grafiqs", "at": target}
    specs["norm"] = {"name": "norm"}
    return specs


class ValidationSet(NamedTuple):
    """Images with their recorded degradation level and, for training people, their labels."""

    source: object  # random-access records with an "image"
    degradation: np.ndarray  # float [N] in [0, 1]
    labels: np.ndarray | None  # int [N] training-class index, or None for unseen people


def subsample(indices: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of `indices` (0: all), drawn without replacement, in order."""
    if not limit or len(indices) <= limit:
        return np.asarray(indices)
    return np.sort(np.random.default_rng(seed).choice(indices, limit, replace=False))


def render_at_levels(global_ids, image_numbers, levels, *, image_size: int,
                     seed: int) -> ArraySource:
    """Renders image `image_numbers[i]` of person `global_ids[i]` at degradation `levels[i]`."""
    images = [render_face(identity_params(int(person), seed=seed),
                          nuisance_params(int(person), int(number), seed=seed,
                                          degradation=float(level)), size=image_size)
              for person, number, level in zip(global_ids, image_numbers, levels, strict=True)]
    return ArraySource(np.stack(images), np.zeros(len(images), np.int32))


def validation_sets(data, config, *, max_images: int, seed: int) -> dict[str, ValidationSet]:
    """The natural-level splits and the uniform-level renders (see the module docstring)."""
    records, degradation = data.records, data.records.extras["degradation"]
    sets = {}
    for split, indices in (("train", data.train_indices), ("holdout", data.holdout_indices)):
        chosen = subsample(indices, max_images, seed)
        sets[split] = ValidationSet(SubsetSource(records, chosen), degradation[chosen],
                                    records.labels[chosen])
    unseen = data.verification.source
    chosen = subsample(np.arange(len(unseen)), max_images, seed)
    sets["unseen_people"] = ValidationSet(SubsetSource(unseen, chosen),
                                          unseen.extras["degradation"][chosen], None)
    rng = np.random.default_rng([seed, 0x0A])
    count = max_images or len(data.holdout_indices)
    people = rng.integers(0, config.data.num_identities, count)
    levels = rng.uniform(0.0, 1.0, count)
    sets["holdout_uniform"] = ValidationSet(
        render_at_levels(people, UNIFORM_IMAGE_OFFSET + np.arange(count), levels,
                         image_size=config.data.image_size, seed=config.data.seed),
        levels, people.astype(np.int32))  # local label = global id for synthetic training people
    levels = rng.uniform(0.0, 1.0, count)
    sets["unseen_uniform"] = ValidationSet(
        render_at_levels(UNIFORM_UNSEEN_OFFSET + np.arange(count), np.zeros(count), levels,
                         image_size=config.data.image_size, seed=config.data.seed),
        levels, None)
    return sets


def recognition_utility(teacher, sets: dict, *, batch_size: int, mesh) -> dict[str, np.ndarray]:
    """Per set of training people: the cosine of each image's embedding to its own class centre
    of the teacher's margin head."""
    graphs, backbone = teacher.backbone()
    embed = make_embed_fn(graphs.eval)
    centres = np.asarray(teacher.class_centres())
    centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    utility = {}
    for split, item in sets.items():
        if item.labels is None:
            continue
        raw = embed_pass(embed, backbone.params, backbone.batch_stats, item.source,
                         batch_size=batch_size, mesh=mesh, mirrored=False)
        unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        utility[split] = np.sum(unit * centres[item.labels], axis=1)
    return utility


def render_kind_study(*, people: int, image_size: int, seed: int) -> dict[str, ArraySource]:
    """Per kind (and "all", the renderer's own mix), `people` unseen faces at every level.

    Records are {"image", "label": level index}; the same draws at every level, so that only
    the degradation differs between the renders of one face.
    """
    studies = {kind: ([], []) for kind in (*KIND_KEYS, "all")}
    for person in range(people):
        global_id = KIND_STUDY_OFFSET + person
        identity = identity_params(global_id, seed=seed)
        clean = nuisance_params(global_id, 0, seed=seed, degradation=0.0)
        for level_index, level in enumerate(LEVELS):
            degraded = nuisance_params(global_id, 0, seed=seed, degradation=level)
            for kind, keys in KIND_KEYS.items():
                if kind == "occlusion" and level not in (0.0, 1.0):
                    continue  # occlusion is on or off
                nuisance = dict(clean, **{key: degraded[key] for key in keys})
                if kind == "occlusion":
                    nuisance["occlude"] = level > 0  # the drawn box, always shown at level 1
                studies[kind][0].append(render_face(identity, nuisance, size=image_size))
                studies[kind][1].append(level_index)
            studies["all"][0].append(render_face(identity, degraded, size=image_size))
            studies["all"][1].append(level_index)
    return {kind: ArraySource(np.stack(images), np.asarray(levels))
            for kind, (images, levels) in studies.items()}


def kind_metrics(scores: np.ndarray, level_index: np.ndarray, people: int) -> dict:
    """Spearman of score with -level over all renders of a kind, and the share of faces whose
    score at the top level is below their clean score."""
    levels = np.asarray(LEVELS)[level_index]
    per_face = scores.reshape(people, -1)  # renders are ordered face by face, level by level
    return {"spearman": float(spearmanr(scores, -levels).statistic),
            "lower_at_max": float(np.mean(per_face[:, -1] < per_face[:, 0]))}


def evaluate_score(score, backbone, sets: dict, utility: dict, kind_sets: dict, *,
                   batch_size: int, mesh, people: int, key) -> tuple[dict, dict]:
    """Correlations and timing of one score over the sets and the per-kind study.

    Returns:
      (result, scores): the JSON-able result, and the scores of every set.
    """
    first = sets["train"].source
    warm = normalize(np.stack([first[i % len(first)]["image"] for i in range(batch_size)]))
    start = time.perf_counter()
    jax.block_until_ready(score(backbone.params, backbone.batch_stats,
                                sharding.shard_batch(warm, mesh), key))
    result = {"spearman": {}, "spearman_with_utility": {}, "per_kind": {},
              "compile_seconds": time.perf_counter() - start}
    scored, seconds, values = 0, 0.0, {}
    for split, item in sets.items():
        start = time.perf_counter()
        values[split] = quality.score_source(score, backbone.params, backbone.batch_stats,
                                             item.source, batch_size=batch_size, mesh=mesh,
                                             key=key, progress=True, desc=split)
        seconds += time.perf_counter() - start
        scored += len(item.source)
        result["spearman"][split] = float(spearmanr(values[split], -item.degradation).statistic)
        if split in utility:
            result["spearman_with_utility"][split] = float(
                spearmanr(values[split], utility[split]).statistic)
    for kind, source in kind_sets.items():
        start = time.perf_counter()
        kind_scores = quality.score_source(score, backbone.params, backbone.batch_stats, source,
                                           batch_size=batch_size, mesh=mesh, key=key)
        seconds += time.perf_counter() - start
        scored += len(source)
        result["per_kind"][kind] = kind_metrics(kind_scores, source.labels, people)
    result["seconds_per_image"] = seconds / scored
    return result, values


def save_scores(values: dict[str, dict[str, np.ndarray]], sets: dict, path) -> None:
    """Every image's score, and its level, per set: `{split}/{score}` and `{split}/degradation`."""
    arrays = {f"{split}/degradation": item.degradation for split, item in sets.items()}
    for name, per_set in values.items():
        arrays.update({f"{split}/{name}": scores for split, scores in per_set.items()})
    np.savez(path, **arrays)


def load_saved_score(entry: str, sets: dict) -> dict[str, np.ndarray]:
    """The per-set scores named by a `--rank-mean` entry `FILE.npz:score` (see `save_scores`).

    Raises:
      SystemExit: no such file or score, or the file was saved on other sets (other levels).
    """
    file_name, _, name = entry.rpartition(":")
    path = pathlib.Path(file_name).expanduser()
    if not path.is_file():
        raise SystemExit(f"--rank-mean: {path} not found (entry {entry!r})")
    with np.load(path) as saved:
        names = sorted({key.split("/", 1)[1] for key in saved.files} - {"degradation"})
        if any(f"{split}/{name}" not in saved.files for split in sets):
            raise SystemExit(f"--rank-mean: {path} holds no score {name!r} for every set; it "
                             f"holds {', '.join(names)}")
        for split, item in sets.items():
            levels = saved.get(f"{split}/degradation")
            if levels is None or not np.array_equal(levels, item.degradation):
                raise SystemExit(f"--rank-mean: {path} was saved on other {split} images than "
                                 "these (run it with the same --workdir, --seed and --max-images)")
        return {split: saved[f"{split}/{name}"] for split in sets}


def rank_mean(values: dict[str, dict[str, np.ndarray]], names: list[str], sets: dict,
              utility: dict) -> dict:
    """Spearman correlations of the mean within-set rank of the scores `names` (equal weights)."""
    result = {"scores": names, "spearman": {}, "spearman_with_utility": {}}
    for split, item in sets.items():
        fused = np.mean([rankdata(values[name][split]) for name in names], axis=0)
        result["spearman"][split] = float(spearmanr(fused, -item.degradation).statistic)
        if split in utility:
            result["spearman_with_utility"][split] = float(
                spearmanr(fused, utility[split]).statistic)
    return result


def plot_validation(results: dict, reference: dict, best: str, best_values: dict, sets: dict,
                    path) -> None:
    """Spearman per score and set (with the utility ceiling), per-kind Spearman, and the best
    score against the level on the uniform-level held-out images."""
    names = list(results)
    splits = list(sets)
    kinds = list(next(iter(results.values()))["per_kind"])
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.4), width_ratios=(1.4, 1.0, 1.0))
    width = 0.8 / len(splits)
    for i, split in enumerate(splits):
        offset = (i - (len(splits) - 1) / 2) * width
        bars = axes[0].bar(np.arange(len(names)) + offset,
                           [results[n]["spearman"][split] for n in names], width, label=split)
        if split in reference:
            axes[0].hlines(reference[split], -0.5, len(names) - 0.5, colors=bars[0].get_facecolor(),
                           linestyles=":", lw=1.2)
    axes[0].axhline(0.6, color="grey", lw=0.8, ls="--")
    axes[0].set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    axes[0].set_ylabel("Spearman with quality (minus degradation level)")
    axes[0].set_title("By set (dotted: the teacher's own utility, dashed: 0.6)" if reference
                      else "By set (dashed: 0.6)")
    axes[0].legend(fontsize=8)
    grid = np.array([[results[n]["per_kind"][k]["spearman"] for k in kinds] for n in names])
    axes[1].imshow(grid, cmap="RdBu", vmin=-1, vmax=1)
    for (r, c), value in np.ndenumerate(grid):
        axes[1].text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8)
    axes[1].set_xticks(np.arange(len(kinds)), kinds, rotation=30, ha="right")
    axes[1].set_yticks(np.arange(len(names)), names)
    axes[1].set_title("One degradation kind at a time (Spearman)")
    split = "holdout_uniform"
    axes[2].scatter(sets[split].degradation, best_values[split], s=4, alpha=0.4)
    axes[2].set_xlabel("degradation level")
    axes[2].set_ylabel(f"{best} score")
    axes[2].set_title(f"{best} on {split} (Spearman {results[best]['spearman'][split]:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def model_verification(graphs, backbone: Backbone, verification, *, size: int, batch_size: int,
                       mesh) -> dict:
    """The model's verification on the run's synthetic pairs (flip test), images resized."""
    embed = make_embed_fn(graphs.eval)
    source = resized(verification.source, size)
    plain, mirrored = (embed_pass(embed, backbone.params, backbone.batch_stats, source,
                                  batch_size=batch_size, mesh=mesh, mirrored=flip)
                       for flip in (False, True))
    return verification_metrics(plain, mirrored, verification)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, type=pathlib.Path,
                        help="run folder with a finished teacher on synthetic faces (with "
                             "--model: its config.json decides the sets)")
    parser.add_argument("--model", default="",
                        help="score with this backbone instead of the run's teacher: a "
                             "pretrained .onnx / .pth file (as model.pretrained names one) or "
                             "another run folder (its exported teacher)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="folder for the JSON and the plot (default: the run folder)")
    parser.add_argument("--max-images", type=int, default=1000,
                        help="images per set, drawn at random (0: all; uniform sets: as many "
                             "as the held-out split)")
    parser.add_argument("--people", type=int, default=60,
                        help="unseen faces rendered per kind in the per-kind study")
    parser.add_argument("--passes", type=int, default=100, help="SER-FIQ stochastic passes")
    parser.add_argument("--rate", type=float, default=0.5, help="SER-FIQ dropout rate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--only", default="",
                        help="comma-separated subset of the scores (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sets and SER-FIQ")
    parser.add_argument("--rank-mean", action="append", default=[],
                        help="comma-separated scores (two or more, among those run, or "
                             "FILE.npz:score saved by an earlier run on the same sets) whose "
                             "within-set ranks are averaged into one more score")
    args = parser.parse_args(argv)
    if args.model:
        config, data, mesh = load_run(args.workdir)
        teacher = None
    else:
        config, data, teacher, mesh = load_teacher(args.workdir)
    if config.data.source != "synthetic" or data.verification is None:
        raise SystemExit("validation needs synthetic faces (recorded degradation) with unseen "
                         f"verification people; {args.workdir} has data.source="
                         f"{config.data.source!r}")
    specs = score_specs(passes=args.passes, rate=args.rate)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(specs))
        if unknown:
            raise SystemExit(f"unknown scores {unknown}; valid: {', '.join(specs)}")
        specs = {name: specs[name] for name in args.only.split(",")}
    fusions = [[name for name in option.split(",") if name] for option in args.rank_mean]
    saved_names = sorted({name for names in fusions for name in names
                          if name.rpartition(":")[0].endswith(".npz")})
    for option, names in zip(args.rank_mean, fusions, strict=True):
        if len(names) < 2 or not set(names) - set(saved_names) <= set(specs):
            raise SystemExit(f"--rank-mean needs two or more of the scores run "
                             f"({', '.join(specs)}) or FILE.npz:score entries; got {option!r}")
    sets = validation_sets(data, config, max_images=args.max_images, seed=args.seed)
    saved_values = {entry: load_saved_score(entry, sets) for entry in saved_names}
    model_summary = {}
    if teacher is not None:
        utility = recognition_utility(teacher, sets, batch_size=args.batch_size, mesh=mesh)
    else:
        description, module = load_model(args.model)
        size = description["input_size"]
        graphs, params, batch_stats = split_model(module)
        backbone = Backbone(params, batch_stats)
        sets = {split: item._replace(source=resized(item.source, size))
                for split, item in sets.items()}
        utility = {}
        skipped = {label: reason for label, options in specs.items()
                   if (reason := quality.unsupported_reason(options["name"], module,
                                                           at=options.get("at", "image")))}
        for label, reason in skipped.items():
            print(f"{label:16s} skipped: {reason}")
        specs = {label: options for label, options in specs.items() if label not in skipped}
        if not specs:
            raise SystemExit(f"no score applies to {args.model}")
        start = time.perf_counter()
        description["synthetic_verification"] = model_verification(
            graphs, backbone, data.verification, size=size, batch_size=args.batch_size,
            mesh=mesh)
        description["synthetic_verification"]["seconds"] = time.perf_counter() - start
        reason = ("the model has no class centres of the synthetic training people (a "
                  "pretrained file has no head; a run's head is over that run's own people)")
        print(f"{description['name']} ({description['kind']}), {size}x{size} input from "
              f"{config.data.image_size}x{config.data.image_size} renders: synthetic "
              f"verification {description['synthetic_verification']['verification_accuracy']:.4f}"
              f"; utility reference skipped: {reason}")
        model_summary = {"model": description, "rendered_size": config.data.image_size,
                         "resample": "PIL bilinear", "utility_skipped": reason,
                         "skipped_scores": skipped}
    reference = {split: float(spearmanr(u, -sets[split].degradation).statistic)
                 for split, u in utility.items()}
    if teacher is not None:
        print("utility (cosine to own class centre) vs quality: "
              + " ".join(f"{k}={v:.3f}" for k, v in reference.items()))
    kind_sets = render_kind_study(people=args.people, image_size=config.data.image_size,
                                  seed=config.data.seed)
    if teacher is not None:
        graphs, backbone = teacher.backbone()
    else:
        kind_sets = {kind: resized(source, size) for kind, source in kind_sets.items()}
    results, values = {}, {}
    key = jax.random.key(args.seed)
    for label, options in specs.items():
        score = quality.make_quality_fn(options.pop("name"), graphs.eval, **options)
        results[label], values[label] = evaluate_score(
            score, backbone, sets, utility, kind_sets, batch_size=args.batch_size, mesh=mesh,
            people=args.people, key=key)
        row = results[label]
        print(f"{label:16s} " + " ".join(f"{s}={v:.3f}" for s, v in row["spearman"].items())
              + f"  {1e3 * row['seconds_per_image']:.2f} ms/image", flush=True)
    values.update(saved_values)
    fused = [rank_mean(values, names, sets, utility) for names in fusions]
    for result in fused:
        print(f"{'rank mean':16s} "
              + " ".join(f"{s}={v:.3f}" for s, v in result["spearman"].items())
              + f"  ({', '.join(result['scores'])})", flush=True)
    best = max(results, key=lambda n: results[n]["spearman"]["holdout_uniform"])
    out = args.out or args.workdir
    out.mkdir(parents=True, exist_ok=True)
    stem = "quality_validation"
    if teacher is None:
        stem += "_" + "".join(c if c.isalnum() or c in "-_." else "_"
                              for c in model_summary["model"]["name"])
    summary = {
        "workdir": str(args.workdir), **model_summary, "best_on_holdout_uniform": best,
        "counts": {split: len(item.source) for split, item in sets.items()},
        "utility_vs_quality": reference,
        "kind_study": {"people": args.people, "levels": list(LEVELS),
                       "occlusion_levels": [0.0, 1.0]},
        "serfiq": {"passes": args.passes, "rate": args.rate}, "seed": args.seed,
        "backend": jax.default_backend(), "scores": results}
    if fused:
        summary["rank_means"] = fused
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_validation(results, reference, best, values[best], sets, out / f"{stem}.png")
    save_scores({name: values[name] for name in results}, sets, out / f"{stem}.npz")
    print(f"best on holdout_uniform: {best}; wrote {out / f'{stem}.json'}, "
          f"{out / f'{stem}.png'} and {out / f'{stem}.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
