"""How far the shared LFW crops are from the ArcFace template, measured with the YuNet detector.

The shared LFW images are the central 128x128 pixels of the deep-funneled release. A 112x112
ArcFace-template model (SFace) expects each face's five landmarks at the template points. This
tool runs the detector over LFW (every image, or a seeded sample) and reports:

  1. detection: images with exactly one face, none, several (at the detector's default settings,
     and at other score thresholds, which need no second pass: a box's survival of non-maximum
     suppression depends only on boxes scoring higher);
  2. a plain resize to 112x112: where each landmark falls against the template (mean and spread
     of the offset, pixels), and the similarity (scale, rotation, shift) that maps each image's
     landmarks to the template (mean, spread, percentiles);
  3. candidate preprocessings, scored by the landmark error against the template (mean over
     images of the mean distance of the five points, pixels of the 112 crop): plain resize, the
     best fixed crop box then resize (one box for every image, least squares over all
     landmarks; inside the image, or anywhere with black outside), and a per-image alignment
     (the least-squares floor), with the share of each crop that falls outside the 128x128
     image (black border);
  4. YuNet's largest findable face (a sample of faces scaled up), which sets `max_side`;
  5. speed of the aligner (images per second, this process) on LFW crops and larger photos.

    python tools/lfw_alignment_stats.py                     # all 13,233 images
    python tools/lfw_alignment_stats.py --sample 2000 --json runs/lfw_alignment.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_pipelines.align import YuNetDetector, align_image, import_cv2
from data_pipelines.similarity import (
    ARCFACE_112,
    apply_affine,
    decompose_similarity,
    estimate_similarity,
)
from data_pipelines.sources.image_folder import scan_image_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def lfw_paths(root: pathlib.Path, sample: int | None, seed: int) -> list[str]:
    files = scan_image_folder(root / "images")
    paths = [p for name in files for p in files[name]]
    if sample and sample < len(paths):
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), sample, replace=False))]
    return paths


def detect_all(paths: list[str], detector: YuNetDetector) -> list[dict]:
    """Every detection of every image (the detector's thresholds set low: filtered later)."""
    found = []
    for path in tqdm(paths, desc="detecting", unit="image"):
        image = np.asarray(Image.open(path).convert("RGB"))
        det = detector.detect(image)
        found.append({"scores": det.scores, "sides": np.minimum(det.boxes[:, 2], det.boxes[:, 3]),
                      "landmarks": det.landmarks, "size": image.shape[:2]})
    return found


def count_faces(found: list[dict], *, threshold: float, min_face_size: float) -> dict[str, int]:
    counts = np.array([np.sum((f["scores"] >= threshold) & (f["sides"] >= min_face_size))
                       for f in found])
    return {"images": len(found), "one": int(np.sum(counts == 1)), "none": int(np.sum(counts == 0)),
            "several": int(np.sum(counts > 1))}


def offsets_table(points_Nx5x2: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each landmark's offset from the template (pixels)."""
    offsets = points_Nx5x2 - ARCFACE_112
    table = {}
    for k, name in enumerate(LANDMARKS):
        dist = np.linalg.norm(offsets[:, k], axis=1)
        table[name] = {"dx_mean": offsets[:, k, 0].mean(), "dx_std": offsets[:, k, 0].std(),
                       "dy_mean": offsets[:, k, 1].mean(), "dy_std": offsets[:, k, 1].std(),
                       "dist_mean": dist.mean()}
    return {k: {m: round(float(v), 2) for m, v in row.items()} for k, row in table.items()}


def similarity_stats(points_Nx5x2: np.ndarray) -> dict[str, dict[str, float]]:
    """Scale, rotation and shift of each image's similarity to the template: mean, std, 5-95%."""
    parts = [decompose_similarity(estimate_similarity(p, ARCFACE_112)) for p in points_Nx5x2]
    stats = {}
    for key in parts[0]:
        values = np.array([p[key] for p in parts])
        p5, p50, p95 = np.percentile(values, [5, 50, 95])
        stats[key] = {"mean": values.mean(), "std": values.std(), "p5": p5, "median": p50,
                      "p95": p95}
    return {k: {m: round(float(v), 4) for m, v in row.items()} for k, row in stats.items()}


def outside_share(matrix_2x3: np.ndarray, *, side: int = 128, grid: int = 56) -> float:
    """Share of the 112x112 crop taken from outside the side x side image (black border)."""
    ticks = (np.arange(grid) + 0.5) * 112 / grid
    us, vs = np.meshgrid(ticks, ticks)
    linear_inv = np.linalg.inv(matrix_2x3[:, :2])
    back = np.concatenate([linear_inv, -linear_inv @ matrix_2x3[:, 2:]], axis=1)
    src = apply_affine(back, np.stack([us.ravel(), vs.ravel()], axis=1))
    return float(np.mean(np.any((src < 0) | (src > side), axis=1)))


def crop_matrix(box: tuple[float, float, float, float]) -> np.ndarray:
    """The [2, 3] map of `crop box (left, top, right, bottom) then resize to 112`."""
    left, top, right, _ = box
    scale = 112.0 / (right - left)
    return np.array([[scale, 0.0, -left * scale], [0.0, scale, -top * scale]])


def error_px(matrix_or_Nx2x3: np.ndarray, points_Nx5x2: np.ndarray) -> np.ndarray:
    """Per image, the mean distance (112-crop pixels) of the mapped landmarks to the template."""
    matrices = np.broadcast_to(matrix_or_Nx2x3, (len(points_Nx5x2), 2, 3))
    mapped = np.stack([apply_affine(m, p) for m, p in zip(matrices, points_Nx5x2, strict=True)])
    return np.linalg.norm(mapped - ARCFACE_112, axis=-1).mean(axis=1)


def best_crop_box(points128_Nx5x2: np.ndarray, *, inside: bool) -> tuple[int, int, int, int]:
    """The square crop box (left, top, right, bottom) whose resize to 112 puts the landmarks of
    every image nearest the template (least squares, integer box).

    For one side the best corner is the mean of `p - template / s` (s = 112 / side), and with
    `inside` the box must stay in the 128x128 image: the squared error is a separable convex
    quadratic in the corner, so clipping that optimum to the allowed range stays optimal.
    """
    flat = points128_Nx5x2.reshape(-1, 2)
    template = np.tile(ARCFACE_112, (len(points128_Nx5x2), 1))
    best, best_sq = None, np.inf
    for side in range(64, 129 if inside else 200):
        scale = 112.0 / side
        corner = np.mean(flat - template / scale, axis=0)
        if inside:
            corner = np.clip(corner, 0, 128 - side)
        corner = np.round(corner)
        sq = np.mean(np.sum(((flat - corner) * scale - template) ** 2, axis=1))
        if sq < best_sq:
            best, best_sq = (int(corner[0]), int(corner[1]), int(corner[0]) + side,
                             int(corner[1]) + side), sq
    return best


def candidates(points128_Nx5x2: np.ndarray) -> dict[str, dict]:
    """Landmark error and border share of a plain resize, the best fixed crop boxes, and a
    per-image alignment (the least-squares floor of any similarity)."""
    any_box = best_crop_box(points128_Nx5x2, inside=False)
    inside_box = best_crop_box(points128_Nx5x2, inside=True)
    per_image = np.stack([estimate_similarity(p, ARCFACE_112) for p in points128_Nx5x2])
    rows = {
        "resize_128_to_112": crop_matrix((0, 0, 128, 128)),
        f"crop_box {inside_box} then resize (best inside the image)": crop_matrix(inside_box),
        f"crop_box {any_box} then resize (best, black outside)": crop_matrix(any_box),
        "per_image_alignment (detector)": per_image,
    }
    out = {}
    for name, matrix in rows.items():
        err = error_px(matrix, points128_Nx5x2)
        borders = ([outside_share(m) for m in matrix] if matrix.ndim == 3
                   else [outside_share(matrix)])
        out[name] = {"error_mean": round(float(err.mean()), 2),
                     "error_p95": round(float(np.percentile(err, 95)), 2),
                     "border_mean": round(float(np.mean(borders)), 4),
                     "border_over_1pct": round(float(np.mean(np.array(borders) > 0.01)), 4)}
    out["best_box_inside"], out["best_box_any"] = inside_box, any_box
    return out


def largest_findable_face(paths: list[str], detector: YuNetDetector, *, count: int,
                          seed: int) -> list[dict]:
    """Share of faces found when a sample of LFW crops is scaled up with no reduction."""
    cv2 = import_cv2()
    full = YuNetDetector(detector.model_path, score_threshold=detector.score_threshold,
                         min_face_size=0, max_side=None)
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in rng.choice(len(paths), min(count, len(paths)), replace=False)]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in chosen]
    base = [full.detect(im) for im in images]
    rows = []
    for side in (256, 384, 512, 576, 640, 704, 768):
        found = [full.detect(cv2.resize(im, (side, side))) for im in images]
        heights = [b.boxes[0, 3] * side / 128 for b in base if len(b)]
        rows.append({"image_side": side, "face_box_height_median": round(float(
            np.median(heights)), 1), "found": sum(len(f) == 1 for f in found),
            "of": len(images)})
    return rows


def timing(paths: list[str], detector: YuNetDetector, *, count: int) -> dict[str, float]:
    """Images per second of align_image (detection and warp) in this process."""
    cv2 = import_cv2()
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:count]]
    out = {"opencv_threads": cv2.getNumThreads(), "cpus": os.cpu_count()}
    start = time.perf_counter()
    for path in paths[:count]:
        align_image(np.asarray(Image.open(path).convert("RGB")), detector)
    out["lfw_128_decode_and_align_per_s"] = count / (time.perf_counter() - start)
    for name, (width, height) in (("photo_640x480", (640, 480)),
                                  ("photo_4032x3024", (4032, 3024))):
        photos = [cv2.resize(im, (width, height)) for im in images[:max(8, count // 20)]]
        start = time.perf_counter()
        for photo in photos:
            align_image(photo, detector)
        out[f"{name}_align_per_s"] = len(photos) / (time.perf_counter() - start)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=pathlib.Path, default=pathlib.Path(os.environ.get(
        "CURE_JAX_LFW", REPO.parent / "shared" / "data" / "lfw")))
    parser.add_argument("--sample", type=int, default=None, help="random images (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-images", type=int, default=500)
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the figures here")
    args = parser.parse_args()

    defaults = YuNetDetector()
    paths = lfw_paths(args.lfw, args.sample, args.seed)
    low = YuNetDetector(score_threshold=min(THRESHOLDS), min_face_size=0).load()
    found = detect_all(paths, low)
    report: dict = {"images": len(paths), "detector_defaults": defaults.settings()}
    report["counts_at_defaults"] = count_faces(found, threshold=defaults.score_threshold,
                                               min_face_size=defaults.min_face_size)
    report["counts_by_threshold_no_min_size"] = {
        t: count_faces(found, threshold=t, min_face_size=0) for t in THRESHOLDS}
    top = np.array([f["scores"][0] if len(f["scores"]) else 0.0 for f in found])
    report["top_score_percentiles"] = {
        p: round(float(np.percentile(top, p)), 4) for p in (1, 5, 50, 95)}
    # Landmarks of images with exactly one face at the defaults, in the 128 crop's pixels.
    one = [f["landmarks"][(f["scores"] >= defaults.score_threshold)
                          & (f["sides"] >= defaults.min_face_size)] for f in found]
    points128 = np.stack([p[0] for p in one if len(p) == 1]).astype(np.float64)
    resized = points128 * (112 / 128)
    report["resize_to_112_offsets_px"] = offsets_table(resized)
    report["resize_to_112_similarity_to_template"] = similarity_stats(resized)
    report["preprocessings"] = candidates(points128)
    report["largest_findable_face"] = largest_findable_face(paths, defaults, count=100,
                                                            seed=args.seed)
    report["timing"] = timing(paths, defaults.load(), count=min(args.timing_images, len(paths)))
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
