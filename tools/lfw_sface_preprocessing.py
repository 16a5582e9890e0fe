"""Which preprocessing of the shared LFW crops an ArcFace-template model (SFace) needs: LFW
verification (pairs.txt, 10 folds, the arcface_torch protocol) with each candidate.

The pretrained SFace recognizer (OpenCV Zoo, int8, run by `cv2.dnn`; RGB 0-255 input, as
OpenCV's FaceRecognizerSF feeds it) embeds the 7,701 images of pairs.txt after each of:

  resize          the 128x128 crop resized to 112x112 (what ImageFolderSource(image_size=112) does)
  box L,T,R,B     a fixed crop box, then the resize; a box inside the image is cut and resized as
                  ImageFolderSource(crop_box=..., image_size=112) does, one reaching outside it is
                  warped with black outside (as insightface's alignment pads)
  detector        per-image alignment: YuNet landmarks, five-point similarity (data_pipelines.align)

The default boxes are those `tools/lfw_alignment_stats.py` found over all 13,233 images: the
least-squares best box inside the image, and the best one anywhere. Without `--flip` each image
is embedded once (half the time; the same for every candidate, so they compare fairly).

    python tools/lfw_sface_preprocessing.py --json runs/lfw_sface_preprocessing.json
    python tools/lfw_sface_preprocessing.py --folds 2 --candidates resize,detector
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np
from tqdm import tqdm

from cure_jax.metrics.verification import pair_distances, verify
from cure_jax.search import flip_unit
from data_pipelines.align import YUNET_FILE, YuNetDetector, align_image, import_cv2
from data_pipelines.sources.image_folder import decode_image
from data_pipelines.sources.lfw_pairs import read_pairs

REPO = pathlib.Path(__file__).resolve().parents[1]
SFACE_FILE = pathlib.Path("sface") / "face_recognition_sface_2021dec_int8bq.onnx"
# From tools/lfw_alignment_stats.py over all 13,233 images (best inside; best anywhere).
DEFAULT_CANDIDATES = "resize,box:5:0:126:121,box:-11:-23:142:130,detector"


def parse_box(text: str) -> tuple[int, int, int, int]:
    values = tuple(int(v) for v in text.split(":")[1:])
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise SystemExit(f"a box candidate is box:LEFT:TOP:RIGHT:BOTTOM, got {text!r}")
    return values  # type: ignore[return-value]


def make_preprocess(name: str, detector: YuNetDetector):
    """path -> uint8 [112, 112, 3] RGB for one candidate."""
    cv2 = import_cv2()
    if name == "resize":
        return lambda path: decode_image(path, image_size=112)
    if name == "detector":
        def aligned(path):
            result = align_image(decode_image(path), detector, multiple="largest")
            if not len(result.faces):  # no face: fall back to the resize (counted by the caller)
                return None
            return result.faces[0]
        return aligned
    if name.startswith("box:"):
        box = parse_box(name)
        if box[0] >= 0 and box[1] >= 0 and box[2] <= 128 and box[3] <= 128:
            return lambda path: decode_image(path, crop_box=box, image_size=112)
        scale = 112.0 / (box[2] - box[0])
        matrix = np.array([[scale, 0, -box[0] * scale], [0, scale, -box[1] * scale]])
        return lambda path: cv2.warpAffine(decode_image(path), matrix, (112, 112),
                                           flags=cv2.INTER_LINEAR, borderValue=0.0)
    raise SystemExit(f"unknown candidate {name!r}: resize, detector or box:L:T:R:B")


class SFace:
    """The OpenCV Zoo SFace recognizer under cv2.dnn; one image at a time (its batch is 1)."""

    def __init__(self, path: pathlib.Path):
        cv2 = import_cv2()
        if not path.is_file():
            raise SystemExit(f"SFace model not found at {path} (set CURE_JAX_MODELS)")
        self.net = cv2.dnn.readNetFromONNX(str(path))

    def __call__(self, face_rgb: np.ndarray) -> np.ndarray:
        # OpenCV's FaceRecognizerSF swaps its BGR input to RGB: the network reads RGB 0-255.
        blob = face_rgb.transpose(2, 0, 1)[None].astype(np.float32)
        self.net.setInput(blob, "data")
        return self.net.forward()[0].astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=pathlib.Path, default=pathlib.Path(os.environ.get(
        "CURE_JAX_LFW", REPO.parent / "shared" / "data" / "lfw")))
    parser.add_argument("--models", type=pathlib.Path, default=pathlib.Path(os.environ.get(
        "CURE_JAX_MODELS", REPO.parent / "shared" / "models")))
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                        help="comma-separated: resize, detector, box:L:T:R:B")
    parser.add_argument("--folds", type=int, default=10, help="use the first N folds of pairs")
    parser.add_argument("--flip", action="store_true", help="add flipped embeddings (protocol)")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    pairs = [p for p in read_pairs(args.lfw / "pairs.txt") if p.fold < args.folds]
    keys = sorted({(p.name_a, p.number_a) for p in pairs} | {(p.name_b, p.number_b) for p in pairs})
    row = {key: i for i, key in enumerate(keys)}
    paths = [str(args.lfw / "images" / n / f"{n}_{i:04d}.jpg") for n, i in keys]
    index_a = np.array([row[(p.name_a, p.number_a)] for p in pairs])
    index_b = np.array([row[(p.name_b, p.number_b)] for p in pairs])
    issame = np.array([p.issame for p in pairs])
    folds = np.array([p.fold for p in pairs])
    sface = SFace(args.models / SFACE_FILE)
    detector = YuNetDetector(args.models / "yunet" / YUNET_FILE).load()

    results = {"pairs": len(pairs), "images": len(paths), "flip": args.flip}
    for name in args.candidates.split(","):
        preprocess, fallback = make_preprocess(name, detector), make_preprocess("resize", None)
        emb, emb_flip, fallbacks = [], [], 0
        start = time.perf_counter()
        for path in tqdm(paths, desc=name, unit="image"):
            face = preprocess(path)
            if face is None:
                face, fallbacks = fallback(path), fallbacks + 1
            emb.append(sface(face))
            if args.flip:
                emb_flip.append(sface(np.ascontiguousarray(face[:, ::-1])))
        emb = np.stack(emb)
        unit = flip_unit(emb, np.stack(emb_flip) if args.flip else None)
        result = verify(pair_distances(unit[index_a], unit[index_b]), issame, folds_P=folds)
        cos = np.sum(unit[index_a] * unit[index_b], axis=1)
        results[name] = {
            "accuracy": round(result.accuracy, 4), "accuracy_std": round(result.accuracy_std, 4),
            "tar_at_far_1e-3": round(result.tar_at_far, 4),
            "cos_same_mean": round(float(cos[issame].mean()), 3),
            "cos_diff_mean": round(float(cos[~issame].mean()), 3),
            "fallbacks_to_resize": fallbacks, "seconds": round(time.perf_counter() - start, 1)}
        print(name, results[name], flush=True)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
