"""Benchmark: the RecordIO and TFDS training loaders at 112x112 (read, decode JPEG, flip,
normalise, batch through grain) against the images/s the teacher step consumes at 112x112.

    python tools/bench_loaders.py [--images 4000] [--steps 10] [--batches 40] [--config default]

LFW (`$CURE_JAX_LFW` or `../shared/data/lfw`) is resized to 112x112 and re-encoded as JPEG
(quality 95) into a temporary insightface `.rec`, as CASIA-WebFace and MS1M ship; the TFDS
dataset is prepared from that `.rec` (skipped without the `tfds` extra). A loader keeps the
step fed when its images/s is above the step's; the target is twice the step's.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import tempfile
import time

import jax
import numpy as np
from bench_teacher import bench_loader, bench_step
from PIL import Image

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from data_pipelines.sources.image_folder import ImageFolderSource
from data_pipelines.sources.recordio_faces import RecordIOFaces, write_faces_rec

SIZE = 112


def lfw_images() -> pathlib.Path:
    repo = pathlib.Path(__file__).resolve().parents[1]
    root = pathlib.Path(os.environ.get("CURE_JAX_LFW", repo.parent / "shared" / "data" / "lfw"))
    return root / "images"


def write_rec_112(out_dir: str, count: int) -> None:
    """The first `count` LFW images (identity order) as a 112x112 JPEG `.rec`."""
    faces = ImageFolderSource(lfw_images(), image_size=SIZE)
    labels = faces.labels[:count]
    used = np.unique(labels)

    def encoded():
        for i in range(len(labels)):
            buf = io.BytesIO()
            Image.fromarray(faces[i]["image"]).save(buf, format="JPEG", quality=95)
            yield buf.getvalue()

    write_faces_rec(out_dir, [faces.identity_names[c] for c in used],
                    np.bincount(labels)[used].tolist(), encoded(), image_shape=(SIZE, SIZE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="default")
    parser.add_argument("--images", type=int, default=4000, help="LFW images in the .rec")
    parser.add_argument("--steps", type=int, default=10, help="timed teacher steps")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per loader")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = config_lib.apply_overrides(config_lib.load_config(args.config),
                                        [f"data.image_size={SIZE}", *args.overrides])
    batch_size = config.teacher.batch_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_rec_112(os.path.join(tmp, "rec"), args.images)
        print(f"wrote a {SIZE}x{SIZE} .rec of {args.images} LFW images in "
              f"{time.perf_counter() - start:.1f} s")
        rec = RecordIOFaces(os.path.join(tmp, "rec"))
        rows.append(("RecordIO (train.rec, JPEG)", bench_loader(rec, batch_size, args.batches)))
        try:
            from data_pipelines.sources.tfds_faces import TfdsFaces, prepare_recordio_dataset
        except ImportError:
            TfdsFaces = None
        if TfdsFaces is not None:
            prepare_recordio_dataset(os.path.join(tmp, "rec"), name="bench_faces",
                                     data_dir=os.path.join(tmp, "tfds"))
            tfds = TfdsFaces("bench_faces", data_dir=os.path.join(tmp, "tfds"))
            rows.append(("TFDS (array_record, JPEG bytes)",
                         bench_loader(tfds, batch_size, args.batches)))
        else:
            print("TFDS loader skipped: tensorflow-datasets is not installed")
        compile_s, step_rate = bench_step(config, args.steps, rec.num_classes)
    print(f"config {args.config} {' '.join(args.overrides)}: {config.model.depth} width "
          f"{config.model.width}, {SIZE}x{SIZE}, batch {batch_size}, {len(jax.devices())} "
          f"{jax.devices()[0].platform} device(s), {os.cpu_count()} CPU(s)")
    print("| what | images/s | vs step |")
    print("|---|---|---|")
    print(f"| teacher step (compile {compile_s:.1f} s) | {step_rate:.0f} | 1.00 |")
    for name, rate in rows:
        verdict = "" if rate >= 2 * step_rate else " (below the 2x target)"
        print(f"| loader: {name} | {rate:.0f} | {rate / step_rate:.1f}{verdict} |")


if __name__ == "__main__":
    main()
