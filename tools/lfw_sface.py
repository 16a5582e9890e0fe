"""LFW verification accuracy of an imported ONNX recognizer (OpenCV Zoo's SFace by default).

    python tools/lfw_sface.py                      # both crops, SFace from the shared models
    python tools/lfw_sface.py --crop template --model path/to/recognizer.onnx
    python tools/lfw_sface.py --crop resize --embeddings-out lfw_sface.npy   # and every image

The project's own protocol: `cure_jax.metrics.verification.verify` over the 6,000 pairs of
`pairs.txt` (its 10 folds), flip test (raw embeddings of each image and its mirror summed, then
normalised), embeddings from `cure_jax.embeddings.embed_pass`.

The LFW crops are the central 128x128 pixels of the deep-funneled images; SFace expects 112x112
faces aligned to the ArcFace five-point template. Two ways in:

- `resize`: the 128x128 crop resized to 112x112 (bilinear).
- `template`: one fixed similarity transform for every image, chosen from geometry alone: YuNet
  (the shared detector) finds the five landmarks on a fixed sample of LFW images (every
  `--sample-every`-th file in sorted order, never looking at pairs or accuracy); the transform
  maps their median positions onto the ArcFace template (least squares, as insightface's
  `norm_crop` does per image); every image is warped with it (black outside the crop, as
  `cv2.warpAffine` leaves it there).

LFW is looked up at `$CURE_JAX_LFW` or `<repo>/../shared/data/lfw`, the models at
`$CURE_JAX_MODELS` or `<repo>/../shared/models`. The `template` crop needs OpenCV
(`opencv-python-headless`) for YuNet.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# insightface's ArcFace template for 112x112: eyes, nose tip, mouth corners (x, y), in the
# image's left-to-right order, the order YuNet reports them in.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
SFACE = "sface/face_recognition_sface_2021dec_int8bq.onnx"
YUNET = "yunet/face_detection_yunet_2023mar_int8bq.onnx"


def shared_dir(variable: str, *parts: str) -> pathlib.Path:
    return pathlib.Path(os.environ.get(variable, REPO.parent.joinpath("shared", *parts)))


def median_landmarks(paths: list[str], detector: pathlib.Path) -> tuple[np.ndarray, int]:
    """Median five-point landmarks [5, 2] of the most central face YuNet finds in each image,
    and the number of images with a face."""
    import cv2

    found = []
    for path in paths:
        image = cv2.imread(path)
        height, width = image.shape[:2]
        yunet = cv2.FaceDetectorYN.create(str(detector), "", (width, height), 0.5, 0.3, 5)
        _, faces = yunet.detect(image)
        if faces is None:
            continue
        centres = faces[:, :2] + faces[:, 2:4] / 2
        central = faces[np.argmin(np.abs(centres - [width / 2, height / 2]).sum(axis=1))]
        found.append(central[4:14].reshape(5, 2))
    return np.median(np.stack(found), axis=0), len(found)


def similarity_transform(src_5x2: np.ndarray, dst_5x2: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, shift) taking src onto dst, as a
    2x3 matrix (Umeyama's method, as skimage's SimilarityTransform that insightface uses)."""
    src_mean, dst_mean = src_5x2.mean(0), dst_5x2.mean(0)
    src, dst = src_5x2 - src_mean, dst_5x2 - dst_mean
    u, s, vt = np.linalg.svd(dst.T @ src / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(s) @ sign) / src.var(0).sum()
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


class WarpedSource:
    """A source whose images are warped by one fixed 2x3 affine matrix to `size` x `size`."""

    def __init__(self, source, matrix_2x3: np.ndarray, size: int):
        self.source, self.size = source, size
        self.pair_indices = source.pair_indices
        inverse = np.linalg.inv(np.vstack([matrix_2x3, [0, 0, 1]]))[:2]
        self.coefficients = tuple(inverse.ravel())  # PIL maps output pixels back to input

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = dict(self.source[index])
        image = Image.fromarray(record["image"]).transform(
            (self.size, self.size), Image.Transform.AFFINE, self.coefficients,
            resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        record["image"] = np.asarray(image)
        return record


def flip_test_embeddings(model, source, *, batch_size: int) -> np.ndarray:
    """[N, D] unit embeddings of every image of `source` by `model`, each the sum of the raw
    embeddings of the image and of its mirror, normalised (arcface_torch's flip test)."""
    from cure_jax import sharding
    from cure_jax.embeddings import embed_pass, make_embed_fn
    from cure_jax.evaluation import unit
    from cure_jax.models.backbone import split_model

    graphs, params, batch_stats = split_model(model)
    mesh = sharding.make_mesh()
    embed = make_embed_fn(graphs.eval)
    params, batch_stats = sharding.replicate((params, batch_stats), mesh)
    plain, mirrored = (embed_pass(embed, params, batch_stats, source, batch_size=batch_size,
                                  mesh=mesh, mirrored=flip, progress=True, desc="embedding")
                       for flip in (False, True))
    return unit(plain + mirrored)


def evaluate(model, source, *, batch_size: int) -> tuple:
    """(VerificationResult, seconds) of `model` on a PairsSource-like `source`."""
    from cure_jax.metrics.verification import pair_distances, verify

    start = time.perf_counter()
    emb = flip_test_embeddings(model, source, batch_size=batch_size)
    idx_a, idx_b, issame, fold = source.pair_indices
    result = verify(pair_distances(emb[idx_a], emb[idx_b]), issame, folds_P=fold)
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(shared_dir("CURE_JAX_MODELS", "models") / SFACE))
    parser.add_argument("--lfw", default=str(shared_dir("CURE_JAX_LFW", "data", "lfw")))
    parser.add_argument("--crop", choices=("resize", "template", "both"), default="both")
    parser.add_argument("--sample-every", type=int, default=130,
                        help="measure landmarks on every N-th LFW file (sorted)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embeddings-out", type=pathlib.Path, default=None,
                        help="also write the flip-test embeddings of every LFW image (the resize "
                             "crop; rows in sorted person/file order) to this .npy: real faces "
                             "for `tools/bench_kmeans.py --embeddings`")
    args = parser.parse_args(argv)
    if args.embeddings_out is not None and args.embeddings_out.suffix != ".npy":
        parser.error(f"--embeddings-out {args.embeddings_out}: expected a .npy path")

    from cure_jax.models.convert.onnx_import import import_onnx
    from data_pipelines.sources.lfw_pairs import PairsSource

    start = time.perf_counter()
    model = import_onnx(args.model)
    size = model.input_size
    print(f"imported {args.model}: input {size}x{size}, embedding {model.embedding_dim}, "
          f"input range {model.input_range} ({time.perf_counter() - start:.1f} s)")
    lfw = pathlib.Path(args.lfw)
    sources = {}
    if args.crop in ("resize", "both"):
        sources["resize"] = PairsSource(lfw, image_size=size)
    if args.crop in ("template", "both"):
        files = sorted(str(p) for p in (lfw / "images").glob("*/*.jpg"))[::args.sample_every]
        detector = shared_dir("CURE_JAX_MODELS", "models") / YUNET
        points, found = median_landmarks(files, detector)
        matrix = similarity_transform(points, ARCFACE_TEMPLATE * size / 112)
        angle = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
        scale = np.hypot(matrix[0, 0], matrix[1, 0])
        print(f"landmarks: median over {found} of {len(files)} images (x, y in the 128x128 "
              f"crop): {np.round(points, 1).tolist()}")
        print(f"transform onto the template: scale {scale:.4f}, rotation {angle:.2f} deg, "
              f"shift {np.round(matrix[:, 2], 2).tolist()}")
        sources["template"] = WarpedSource(PairsSource(lfw), matrix, size)
    for name, source in sources.items():
        result, seconds = evaluate(model, source, batch_size=args.batch_size)
        print(f"{name:8s}: accuracy {100 * result.accuracy:.2f} +- "
              f"{100 * result.accuracy_std:.2f} %, TAR@FAR=1e-3 {100 * result.tar_at_far:.2f} % "
              f"(FAR {100 * result.far:.3f} %), {result.num_pairs} pairs, {len(source)} images, "
              f"{seconds:.1f} s")
    if args.embeddings_out is not None:
        from data_pipelines.sources.image_folder import ImageFolderSource

        every = ImageFolderSource(lfw / "images", image_size=size)
        emb = flip_test_embeddings(model, every, batch_size=args.batch_size)
        args.embeddings_out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.embeddings_out, np.asarray(emb, np.float32))
        print(f"wrote {args.embeddings_out}: {emb.shape[0]} images x {emb.shape[1]}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
