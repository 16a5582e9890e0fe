"""Scores every image of a face folder with a run's teacher and shows the lowest- and the
highest-scored ones: what a label-free quality score finds on real faces.

    python -m cure_jax.train --config lfw --stage teacher --workdir /tmp/runs/lfw
    python tools/quality_extremes.py --workdir /tmp/runs/lfw --score norm

By default the folder is the run's own `data.root` with every identity kept (min_images=1), read
as the run reads it (crop box, image size). Writes `quality_extremes.png` (the `--count` lowest
and highest images, labelled with their scores), `quality_extremes.json` (those images' paths and
scores, and the score's summary) and `quality_scores.npz` (every path and score) into the run
folder (or --out).
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
from data_pipelines.pipelines import materialize
from data_pipelines.sources.image_folder import ImageFolderSource, decode_image

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    (out / "quality_extremes.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{label} on {len(scores)} images of {root} in {seconds:.1f} s; wrote "
          f"{out / 'quality_extremes.png'}, {out / 'quality_extremes.json'}, "
          f"{out / 'quality_scores.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
