"""A source whose images are the aligned faces of another source's photos.

Wraps any random-access source of `{"image": uint8 [H, W, 3] RGB, "label": int, ...}` records
(an `ImageFolderSource` over a user's own photos, say) and returns each record with its image
replaced by the face aligned to the ArcFace template (`data_pipelines.align`):

    photos = ImageFolderSource("my_photos")                  # keep the photos' own size
    faces = AlignedSource(photos, on_failure="drop")         # one detection pass, then warps
    faces[0]  # {"image": uint8[112, 112, 3], "label": ..., "path": ..., "landmarks": [5, 2]}
    faces.failures  # {photo index: Outcome.NO_FACE or Outcome.SEVERAL_FACES}

Wrap a source that keeps the photos' own size. `ImageFolderSource` does not apply EXIF
orientation, so camera photos stored sideways show no face: align those with
`python -m cure_jax.align`, which turns them upright first.

A photo without exactly one usable face cannot be aligned; `on_failure` says what happens:
  "error": nothing runs up front; reading such a record raises `AlignmentError`.
  "drop": every photo is searched once when the source is built; the photos that give no face
    are left out and listed in `failures`, and reading a record only warps (no second search).
  "resize": as "drop", but such a photo stays, resized whole to the crop size (bilinear), so that
    records keep the wrapped source's indices (verification pairs refer to them).
With "drop" and "resize", `outcomes` counts what the search found in every photo.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_pipelines.align import (
    Outcome,
    YuNetDetector,
    align_image,
    arcface_template,
    choose_faces,
    warp_face,
)

ON_FAILURE_CHOICES = ("error", "drop", "resize")
# One record is one face: "all" would need a record per face, which a source index cannot give.
SOURCE_MULTIPLE_CHOICES = ("skip", "largest")


class AlignmentError(ValueError):
    """A record's photo gives no face to align.

    Attributes:
      index: the record's index in the wrapped source.
      outcome: `Outcome.NO_FACE` or `Outcome.SEVERAL_FACES`.
      path: the photo's file when the record names one, else None.
    """

    def __init__(self, index: int, outcome: Outcome, path: str | None):
        where = f" ({path})" if path else ""
        super().__init__(f"record {index}{where}: no face aligned, outcome {outcome.value!r}")
        self.index, self.outcome, self.path = index, outcome, path


class AlignedSource:
    """Random-access source of aligned faces over a source of photos.

    Args:
      source: random-access source of `{"image": uint8 [H, W, 3] RGB, "label", ...}` records.
      detector: the face detector; None builds a `YuNetDetector` with its defaults.
      size: side of the aligned faces.
      multiple: photos with several faces: "skip" (no record) or "largest" (its largest face).
      on_failure: "error", "drop" or "resize" (module docstring).
      progress: show a progress bar for the detection pass of "drop" and "resize".

    Attributes:
      indices: int64 [N] the wrapped source's index of each record.
      failures: {wrapped index: Outcome} of the photos without a face to align, left out
        ("drop") or resized whole ("resize"); empty for "error".
      outcomes: {Outcome: number of photos} of the detection pass (empty for "error").

    Raises:
      ValueError: a setting is not among its choices.
    """

    def __init__(self, source, *, detector: YuNetDetector | None = None, size: int = 112,
                 multiple: str = "largest", on_failure: str = "error", progress: bool = True):
        if multiple not in SOURCE_MULTIPLE_CHOICES:
            raise ValueError(f"multiple must be one of {SOURCE_MULTIPLE_CHOICES} (one face per "
                             f"record), got {multiple!r}")
        if on_failure not in ON_FAILURE_CHOICES:
            raise ValueError(f"on_failure must be one of {ON_FAILURE_CHOICES}, got {on_failure!r}")
        arcface_template(size)  # validates size
        self.source = source
        self.detector = detector if detector is not None else YuNetDetector()
        self.size, self.multiple, self.on_failure = size, multiple, on_failure
        self.failures: dict[int, Outcome] = {}
        self.outcomes: dict[Outcome, int] = {}
        self._landmarks: np.ndarray | None = None  # float32 [N, 5, 2], "drop" only
        if on_failure == "error":
            self.indices = np.arange(len(source), dtype=np.int64)
        else:
            self._scan(progress=progress)

    def _scan(self, *, progress: bool) -> None:
        """Searches every photo once; keeps the landmarks of those that give a face (NaN for a
        photo kept without one, "resize")."""
        kept, landmarks = [], []
        for index in tqdm(range(len(self.source)), desc="detecting faces", disable=not progress,
                          leave=False):
            detections = self.detector.detect(self.source[index]["image"])
            outcome, chosen = choose_faces(detections, multiple=self.multiple)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            if len(chosen):
                kept.append(index)
                landmarks.append(detections.landmarks[chosen[0]])
                continue
            self.failures[index] = outcome
            if self.on_failure == "resize":
                kept.append(index)
                landmarks.append(np.full((5, 2), np.nan, np.float32))
        self.indices = np.asarray(kept, dtype=np.int64)
        self._landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        # grain checkpoints a DataLoader's source by its repr: it must name the exact records.
        return (f"AlignedSource(source={self.source!r}, num_records={len(self)}, "
                f"size={self.size}, multiple={self.multiple!r}, on_failure={self.on_failure!r}, "
                f"detector={self.detector.settings()})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The record with "image" the aligned face (uint8 [S, S, 3]) and "landmarks" (float32
        [5, 2], in the photo's pixels; NaN for a photo resized whole) added; every other key of
        the wrapped record is kept.

        Raises:
          IndexError: `index` outside [0, len).
          AlignmentError: the photo gives no face ("error" mode).
        """
        index = operator.index(index)
        if not 0 <= index < len(self.indices):
            raise IndexError(f"record index {index} outside [0, {len(self.indices)})")
        source_index = int(self.indices[index])
        record = dict(self.source[source_index])
        if self._landmarks is not None:
            landmarks = self._landmarks[index]
            face = (warp_face(record["image"], landmarks, size=self.size)
                    if np.all(np.isfinite(landmarks)) else self._resized(record["image"]))
        else:
            result = align_image(record["image"], self.detector, size=self.size,
                                 multiple=self.multiple)
            if not len(result.faces):
                raise AlignmentError(source_index, result.outcome, record.get("path"))
            face, landmarks = result.faces[0], result.landmarks[0]
        record["image"] = face
        record["landmarks"] = np.asarray(landmarks, np.float32)
        return record

    def _resized(self, image: np.ndarray) -> np.ndarray:
        """The whole photo at the crop size (bilinear), for a photo without a face ("resize")."""
        pil = Image.fromarray(image).resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(pil, dtype=np.uint8)
