"""Command line: `python -m cure_jax.align --input DIR --output DIR [--size 112]
[--multiple skip|largest] [--identity NAME] [--format png|jpg]`.

Aligns a folder of photos to the 112x112 ArcFace template (YuNet detection, five-point
similarity transform; `data_pipelines.align`), ready for `ImageFolderSource`. The input is either
a folder per identity (`DIR/<identity>/<photos>`) or a flat folder of one person's photos
(`DIR/<photos>`, named by `--identity`). The output holds a folder per identity of aligned faces
named after their photos, and `alignment.json`: the settings, the counts, and every input file
with its outcome (aligned, largest of several, several faces, no face, unreadable), the faces'
scores, boxes and landmarks. Photos are turned upright by their EXIF orientation first.

With several faces in a photo, `--multiple skip` (the default) writes none, so that nobody else's
face lands in an identity's folder; `--multiple largest` keeps the largest. Every file that gives
no face is listed in the report and counted in the printed summary.

The output folder must be new or empty: a second run never mixes its faces with an earlier
run's. Align into a new folder, or delete the old one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from data_pipelines.align import (
    AlignResult,
    Outcome,
    YuNetDetector,
    align_image,
    arcface_template,
    import_cv2,
)
from data_pipelines.sources.image_folder import BadImageError

REPORT_NAME = "alignment.json"
FORMATS = ("png", "jpg")
JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class Photo:
    """One input file and where its face goes (`output` relative to the output folder)."""

    path: pathlib.Path
    identity: str
    output: str


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m cure_jax.align", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=pathlib.Path,
                        help="a folder per identity of photos, or a flat folder of photos")
    parser.add_argument("--output", required=True, type=pathlib.Path,
                        help="new or empty folder for the aligned faces and the report")
    parser.add_argument("--identity", default=None,
                        help="output folder name for a flat input folder (required there)")
    parser.add_argument("--size", type=int, default=112, help="side of the aligned faces")
    parser.add_argument("--multiple", default="skip", choices=("skip", "largest"),
                        help="photos with several faces: write none (skip) or the largest")
    parser.add_argument("--format", default="png", choices=FORMATS, help="aligned face files")
    parser.add_argument("--model", default=None, help="YuNet ONNX file (default: "
                        "$CURE_JAX_MODELS/yunet/..., else ../shared/models/yunet/...)")
    parser.add_argument("--score-threshold", type=float, default=0.8)
    parser.add_argument("--nms-threshold", type=float, default=0.3)
    parser.add_argument("--min-face-size", type=float, default=32.0,
                        help="ignore faces narrower or shorter than this many photo pixels")
    parser.add_argument("--max-side", type=int, default=512,
                        help="longest side at which faces are searched (0: full resolution)")
    return parser.parse_args(argv)


def _visible(entries) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _output_names(files: list[pathlib.Path], fmt: str) -> list[str]:
    """`<stem>.<fmt>` per file; files sharing a stem (a.jpg, a.png) keep their extension too."""
    stems = Counter(f.stem for f in files)
    return [f"{f.stem}.{fmt}" if stems[f.stem] == 1 else f"{f.stem}_{f.suffix[1:]}.{fmt}"
            for f in files]


def plan_photos(input_dir: pathlib.Path, *, identity: str | None, fmt: str) -> list[Photo]:
    """Every visible file of the input, with its identity and output name.

    Files directly in `input_dir` make a flat folder (one identity, `identity`); sub-folders make
    a folder per identity (their visible files, not recursive). Every file is an input, whatever
    its extension: one that does not decode is reported as unreadable, not passed over.

    Raises:
      SystemExit: the folder is missing or empty, mixes both layouts, or `identity` is missing
        for a flat folder or given for a folder per identity.
    """
    if not input_dir.is_dir():
        raise SystemExit(f"--input {input_dir} is not a folder")
    with os.scandir(input_dir) as entries:
        visible = _visible(entries)
    files = [pathlib.Path(e.path) for e in visible if e.is_file()]
    folders = [pathlib.Path(e.path) for e in visible if e.is_dir()]
    if files and folders:
        raise SystemExit(
            f"--input {input_dir} mixes {len(files)} files (e.g. {files[0].name}) with "
            f"{len(folders)} folders (e.g. {folders[0].name}): use one folder per identity, or a "
            "flat folder of one person's photos")
    if files:
        if not identity:
            raise SystemExit(f"--input {input_dir} is a flat folder of photos: name its person "
                             "with --identity NAME (the output folder name)")
        if "/" in identity or identity.startswith("."):
            raise SystemExit(f"--identity {identity!r} must be a plain folder name")
        return [Photo(f, identity, f"{identity}/{name}")
                for f, name in zip(files, _output_names(files, fmt), strict=True)]
    if identity:
        raise SystemExit(f"--identity is for a flat folder of photos; {input_dir} holds "
                         f"{len(folders)} identity folders, whose names are used")
    photos, empty = [], []
    for folder in folders:
        with os.scandir(folder) as entries:
            inner = [pathlib.Path(e.path) for e in _visible(entries) if e.is_file()]
        photos += [Photo(f, folder.name, f"{folder.name}/{name}")
                   for f, name in zip(inner, _output_names(inner, fmt), strict=True)]
        if not inner:
            empty.append(folder.name)
    if empty:
        print(f"{len(empty)} identity folders hold no file and give no faces: "
              f"{', '.join(empty)}", file=sys.stderr)
    if not photos:
        raise SystemExit(f"--input {input_dir} holds no file to align")
    return photos


def prepare_output(output_dir: pathlib.Path, input_dir: pathlib.Path) -> None:
    """Creates the output folder; refuses a non-empty one and one inside the input (or holding
    it), so that runs never mix and outputs are never read back as photos."""
    out, inp = output_dir.resolve(), input_dir.resolve()
    if out == inp or inp in out.parents or out in inp.parents:
        raise SystemExit(f"--output {output_dir} must lie outside --input {input_dir}")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise SystemExit(f"--output {output_dir} exists and is not a folder")
        if any(output_dir.iterdir()):
            raise SystemExit(
                f"--output {output_dir} is not empty (an earlier run?): align into a new folder, "
                "or delete this one to start over")
    output_dir.mkdir(parents=True, exist_ok=True)


def read_photo(path: pathlib.Path) -> np.ndarray:
    """Decodes a photo to uint8 [H, W, 3] RGB, upright by its EXIF orientation.

    Raises:
      BadImageError: the file cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()  # inside the try: PIL decodes lazily, truncation shows only here
            upright = ImageOps.exif_transpose(img)
            rgb = upright.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(str(path), f"{type(err).__name__}: {err}") from err
    return np.asarray(rgb, dtype=np.uint8)


def _face_fields(result: AlignResult) -> dict[str, Any]:
    """The detections of one photo, for the report (photo pixels, by decreasing score), and
    the index among them of the face written."""
    det = result.detections
    return {
        "faces_detected": len(det),
        "aligned_face": int(result.chosen[0]) if len(result.chosen) else None,
        "scores": np.round(det.scores.astype(np.float64), 4).tolist(),
        "boxes": np.round(det.boxes.astype(np.float64), 2).tolist(),
        "landmarks": np.round(det.landmarks.astype(np.float64), 2).tolist(),
    }


def align_photo(photo: Photo, output_dir: pathlib.Path, detector: YuNetDetector, *, size: int,
                multiple: str) -> dict[str, Any]:
    """Aligns one photo, writes its face, and returns its report entry."""
    entry: dict[str, Any] = {"input": str(photo.path), "identity": photo.identity}
    try:
        image = read_photo(photo.path)
    except BadImageError as err:
        return entry | {"outcome": Outcome.UNREADABLE.value, "output": None, "error": str(err)}
    result = align_image(image, detector, size=size, multiple=multiple)
    output = None
    if len(result.faces):
        output = photo.output
        target = output_dir / output
        target.parent.mkdir(exist_ok=True)
        save = {"quality": JPEG_QUALITY} if target.suffix == ".jpg" else {}
        Image.fromarray(result.faces[0]).save(target, **save)
    return entry | {"outcome": result.outcome.value, "output": output, **_face_fields(result),
                    "photo_size": list(image.shape[1::-1])}


def summarise(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per outcome, and the identities left with no aligned face."""
    counts = Counter(e["outcome"] for e in entries)
    written = Counter(e["identity"] for e in entries if e["output"])
    identities = sorted({e["identity"] for e in entries})
    return {
        "files": len(entries),
        "faces_written": sum(written.values()),
        "outcomes": {o.value: counts.get(o.value, 0) for o in Outcome
                     if o is not Outcome.ALL_OF_SEVERAL},
        "identities": len(identities),
        "identities_without_faces": [i for i in identities if not written[i]],
    }


def write_report(path: pathlib.Path, *, settings: dict[str, Any], summary: dict[str, Any],
                 entries: list[dict[str, Any]]) -> None:
    """One JSON object: settings and summary indented, then one line per input file."""
    head = json.dumps({"settings": settings, "summary": summary}, indent=1)[:-2]
    files = ",\n".join("  " + json.dumps(entry) for entry in entries)
    path.write_text(f'{head},\n "files": [\n{files}\n ]\n}}\n')


def print_summary(summary: dict[str, Any], report: pathlib.Path) -> None:
    outcomes = summary["outcomes"]
    print(f"{summary['files']} files, {summary['faces_written']} aligned faces written for "
          f"{summary['identities'] - len(summary['identities_without_faces'])} of "
          f"{summary['identities']} identities")
    for name, count in outcomes.items():
        print(f"  {name:<20} {count}")
    if summary["identities_without_faces"]:
        print(f"identities with no aligned face: {', '.join(summary['identities_without_faces'])}")
    print(f"every file and its outcome: {report}")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        arcface_template(args.size)
        detector = YuNetDetector(args.model, score_threshold=args.score_threshold,
                                 nms_threshold=args.nms_threshold,
                                 min_face_size=args.min_face_size,
                                 max_side=args.max_side or None).load()
    except (ValueError, ImportError, FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from err
    photos = plan_photos(args.input, identity=args.identity, fmt=args.format)
    prepare_output(args.output, args.input)
    entries = [align_photo(p, args.output, detector, size=args.size, multiple=args.multiple)
               for p in tqdm(photos, desc="aligning", unit="photo")]
    summary = summarise(entries)
    settings = {"input": str(args.input), "size": args.size, "multiple": args.multiple,
                "format": args.format, "opencv": import_cv2().__version__,
                "detector": detector.settings()}
    report = args.output / REPORT_NAME
    write_report(report, settings=settings, summary=summary, entries=entries)
    print_summary(summary, report)
    return 0 if summary["faces_written"] else 1


if __name__ == "__main__":
    sys.exit(main())
