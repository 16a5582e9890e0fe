"""Shows the lowest- and the highest-scored images of a face folder under a quality score.

Scores every image with a run's teacher: what a label-free quality score finds on real faces.

    python -m cure_jax.train --config lfw --stage teacher --workdir /tmp/runs/lfw
    python tools/quality_extremes.py --workdir /tmp/runs/lfw --score norm

By default the folder is the run's own `data.root` with every identity kept (min_images=1), read
as the run reads it (crop box, image size). Writes `quality_extremes.png` (the `--count` lowest
and highest images, labelled with their scores), `quality_extremes.json` (those images' paths and
scores, and the score's summary) and `quality_scores.npz` (every path and score) into the run
folder (or --out).

When the run verifies on an LFW-style `pairs.txt` whose images are in the folder, the JSON also
holds an error-versus-reject check, the usual test of a face quality score without ground truth:
a pair's quality is the lower of its two images' scores; the pairs below a quality quantile are
rejected, and the false non-match rate of the kept same-person pairs is measured at the
threshold that gives a false match rate of 1% over all different-person pairs (teacher
embeddings with the flip test). A useful score lowers it faster than rejecting at random.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import matplotlib
import numpy as np
from quality_validate import load_teacher

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import quality
from cure_jax.embeddings import embed_pass, make_embed_fn
from data_pipelines.pipelines import materialize
from data_pipelines.sources.image_folder import ImageFolderSource, decode_image
from data_pipelines.sources.lfw_pairs import read_pairs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_extremes(paths, scores, order, *, count: int, crop_box, label: str, path) -> None:
    """Two grids: the `count` lowest-scored images (left) and the `count` highest (right),
    shown at their stored resolution (after the crop box), each titled with its score."""
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(rows, 2 * columns + 1, figsize=(2 * (2 * columns + 1), 2.25 * rows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    groups = (("lowest", order[:count]), ("highest", order[::-1][:count]))
    for side, (_, chosen) in enumerate(groups):
        for n, index in enumerate(chosen):
            ax = axes[n // columns, side * (columns + 1) + n % columns]
            ax.imshow(decode_image(paths[index], crop_box=crop_box))
            name = pathlib.Path(paths[index]).stem
            ax.set_title(f"{scores[index]:.4g}\n{name[:22]}", fontsize=7)
    fig.suptitle(f"{label}: {count} lowest (left) and {count} highest (right) of {len(scores)} "
                 "images", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REJECT_FRACTIONS = (0.0, 0.1, 0.2, 0.35, 0.5)


def error_versus_reject(unit_NxD: np.ndarray, scores_N: np.ndarray, pairs, folder, *,
                        seed: int = 0) -> dict:
    """False non-match rate at FMR 1% of the same-person pairs kept after rejecting the
    lowest-quality share of pairs, for the score and for a random rejection.

    Args:
      unit_NxD: unit embeddings of the folder's records.
      scores_N: quality of the folder's records.
      pairs: `read_pairs` output; every image must be among the folder's records.
      folder: the `ImageFolderSource` (for `index_of`).
      seed: seeds the random rejection.
    """
    a = np.array([folder.index_of(p.name_a, p.number_a) for p in pairs])
    b = np.array([folder.index_of(p.name_b, p.number_b) for p in pairs])
    same = np.array([p.issame for p in pairs])
    cosine = np.sum(unit_NxD[a] * unit_NxD[b], axis=1)
    threshold = float(np.quantile(cosine[~same], 0.99))  # FMR 1% over all different pairs
    result = {"threshold": threshold, "fnmr": {}, "fnmr_random": {}}
    for name, pair_quality in (
            ("fnmr", np.minimum(scores_N[a], scores_N[b])),
            ("fnmr_random", np.random.default_rng(seed).random(len(pairs)))):
        for fraction in REJECT_FRACTIONS:
            kept = same & (pair_quality >= np.quantile(pair_quality, fraction))
            result[name][str(fraction)] = float(np.mean(cosine[kept] < threshold))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workdir", required=True, type=pathlib.Path,
                        help="run folder with a finished teacher")
    parser.add_argument("--root", default=None,
                        help="folder with one sub-folder per identity (default: data.root)")
    parser.add_argument("--score", default="grafiqs", choices=quality.SCORES)
    parser.add_argument("--at", default="image", choices=quality.GRAFIQS_TARGETS,
                        help="GraFIQs gradient target")
    parser.add_argument("--passes", type=int, default=100, help="SER-FIQ stochastic passes")
    parser.add_argument("--rate", type=float, default=0.5, help="SER-FIQ dropout rate")
    parser.add_argument("--count", type=int, default=16, help="images shown at each end")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    config, _, teacher, mesh = load_teacher(args.workdir)
    graphs, backbone = teacher.backbone()
    root = args.root or config.data.root
    if not root:
        raise SystemExit(f"{args.workdir} has no data.root (synthetic faces?); pass --root")
    crop_box = tuple(config.data.crop_box) or None
    folder = ImageFolderSource(root, min_images=1, crop_box=crop_box,
                               image_size=config.data.image_size)
    source = materialize(folder, desc=f"decoding {pathlib.Path(root).name}")
    score = quality.make_quality_fn(args.score, graphs.eval, passes=args.passes, rate=args.rate,
                                    at=args.at)
    label = f"grafiqs@{args.at}" if args.score == "grafiqs" else args.score
    start = time.perf_counter()
    scores = quality.score_source(score, backbone.params, backbone.batch_stats, source,
                                  batch_size=args.batch_size, mesh=mesh, progress=True,
                                  desc=label)
    seconds = time.perf_counter() - start
    order = np.argsort(scores, kind="stable")
    out = args.out or args.workdir
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "quality_scores.npz", paths=np.asarray(folder.paths), scores=scores)
    plot_extremes(folder.paths, scores, order, count=args.count, crop_box=crop_box, label=label,
                  path=out / "quality_extremes.png")

    def listed(indices):
        return [{"path": folder.paths[i], "score": float(scores[i])} for i in indices]

    summary = {"workdir": str(args.workdir), "root": str(root), "score": label,
               "images": len(scores), "seconds_with_compile": seconds,
               "quantiles": {str(q): float(np.quantile(scores, q))
                             for q in (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)},
               "lowest": listed(order[:args.count]),
               "highest": listed(order[::-1][:args.count]),
               "backend": jax.default_backend()}
    if config.data.pairs:
        embed = make_embed_fn(graphs.eval)
        # The flip test: the raw embeddings of the image and of its mirror image, summed.
        raw = sum(embed_pass(embed, backbone.params, backbone.batch_stats, source,
                             batch_size=args.batch_size, mesh=mesh, mirrored=mirrored,
                             progress=True) for mirrored in (False, True))
        unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        summary["error_versus_reject"] = error_versus_reject(
            unit, scores, read_pairs(config.data.pairs), folder)
        print("FNMR at FMR 1% after rejecting the lowest-quality pairs: " + ", ".join(
            f"{f}: {v:.3f} (random {summary['error_versus_reject']['fnmr_random'][f]:.3f})"
            for f, v in summary["error_versus_reject"]["fnmr"].items()))
    (out / "quality_extremes.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{label} on {len(scores)} images of {root} in {seconds:.1f} s; wrote "
          f"{out / 'quality_extremes.png'}, {out / 'quality_extremes.json'}, "
          f"{out / 'quality_scores.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
