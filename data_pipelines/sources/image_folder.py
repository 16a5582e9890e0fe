"""Face images stored one folder per identity: `root/<identity>/<image files>`.

This is the layout of LFW (`images/<Person_Name>/<Person_Name>_0001.jpg`), of CASIA-WebFace once
unpacked, and of most face datasets a user already has on disk. The source gives grain random
access to decoded RGB uint8 images with integer identity labels:

    source = ImageFolderSource("lfw/images", min_images=10, image_size=112)
    source[0]  # {"image": uint8[112, 112, 3], "label": np.int32, "path": str}

Labels follow the sorted identity names (0 .. C-1) and records follow the sorted file names, so
the same folder and options always give the same indices on every machine.
"""

from __future__ import annotations

import operator
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png")
ON_BAD_IMAGE_CHOICES = ("error", "skip")


class BadImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image).

    Attributes:
      path: the file that failed.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot decode image file {path!r}: {reason}")
        self.path = path


def _normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ValueError("extensions must name at least one file extension, e.g. ('.jpg',)")
    return exts


def scan_image_folder(
    root: str | os.PathLike, extensions: Sequence[str] = DEFAULT_EXTENSIONS
) -> dict[str, list[str]]:
    """Lists the image files of every identity folder under `root`.

    Uses `os.scandir`, which reads the file type from the directory entry and so needs no `stat`
    per file: LFW's 5,749 folders scan in about half a second on a cold cache.

    Args:
      root: folder holding one sub-folder per identity.
      extensions: file extensions kept, compared case-insensitively (".JPG" matches ".jpg").

    Returns:
      {identity name: sorted list of image paths}, keys in sorted order. Identity folders with
      no matching file map to an empty list, so that callers can report them. Hidden entries
      (names starting with ".") and plain files directly under `root` are ignored.

    Raises:
      FileNotFoundError: `root` does not exist.
      NotADirectoryError: `root` is not a directory.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder root {root!r} does not exist")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"image folder root {root!r} is not a directory")
    exts = _normalise_extensions(extensions)
    folders: list[tuple[str, str]] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_dir():
                folders.append((entry.name, entry.path))
    files: dict[str, list[str]] = {}
    for name, path in sorted(folders):
        with os.scandir(path) as entries:
            files[name] = sorted(
                e.path
                for e in entries
                if not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in exts
                and e.is_file()
            )
    return files


def check_crop_box(crop_box: Sequence[int] | None) -> tuple[int, int, int, int] | None:
    """Validates a (left, top, right, bottom) box in source pixels; None means no crop.

    Raises:
      ValueError: not four integers, negative, or empty (right <= left or bottom <= top).
    """
    if crop_box is None:
        return None
    try:
        box = tuple(operator.index(v) for v in crop_box)
    except TypeError as err:
        raise ValueError(
            f"crop_box must be four integers (left, top, right, bottom), got {crop_box!r}"
        ) from err
    if len(box) != 4:
        raise ValueError(
            f"crop_box must be four integers (left, top, right, bottom), got {crop_box!r}"
        )
    left, top, right, bottom = box
    if left < 0 or top < 0 or right <= left or bottom <= top:
        raise ValueError(
            "crop_box (left, top, right, bottom) needs 0 <= left < right and 0 <= top < bottom, "
            f"got {crop_box!r}"
        )
    return box  # type: ignore[return-value]


def check_image_size(image_size: int | None) -> int | None:
    """Validates the side of the square output image; None keeps the decoded size."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    return int(image_size)


# 16-bit grayscale modes as PIL names them; their pixels are scaled to 8 bits, not clipped.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(img: Image.Image, path: str) -> Image.Image:
    """An RGB view of any image mode, scaling 16-bit samples instead of clipping them."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(img, dtype=np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise BadImageError(path, f"mode {mode} holds values outside 0..65535; convert the "
                                      "file to 8 or 16 bits per channel")
        # 65535 / 257 = 255: the full 16-bit range onto the full 8-bit range.
        gray = np.round(values / 257.0).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # uint8 [H, W]: mode L
    if mode == "F":
        raise BadImageError(path, "floating-point pixels (mode F) have no defined range; "
                                  "convert the file to 8 bits per channel")
    return img.convert("RGB")


def decode_image(
    path: str,
    *,
    crop_box: tuple[int, int, int, int] | None = None,
    image_size: int | None = None,
) -> np.ndarray:
    """Decodes one image file to RGB, then crops, then resizes to a square.

    Any PIL mode is read as it is: palette, grayscale, CMYK and alpha images are converted to
    RGB, and 16-bit grayscale is scaled to 8 bits (a 16-bit PNG would otherwise clip to white).

    Args:
      path: image file (anything PIL reads; JPEG and PNG here).
      crop_box: (left, top, right, bottom) in source pixels, already validated, or None.
      image_size: side of the square output (PIL bilinear), or None to keep the size.

    Returns:
      uint8[H, W, 3].

    Raises:
      BadImageError: the file cannot be opened or decoded, or holds pixels of no known range.
      ValueError: `crop_box` reaches outside the image (a setting error, never skipped).
    """
    return decode_image_with_size(path, crop_box=crop_box, image_size=image_size)[0]


def decode_image_with_size(
    path: str,
    *,
    crop_box: tuple[int, int, int, int] | None = None,
    image_size: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_image`, and the (width, height) of the face region before resizing."""
    try:
        with Image.open(path) as img:
            # load() inside the try: PIL opens lazily, and truncation shows only on decode.
            img.load()
            rgb = _to_rgb(img, path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, BadImageError):
            raise
        raise BadImageError(path, f"{type(err).__name__}: {err}") from err
    if crop_box is not None:
        width, height = rgb.size
        if crop_box[2] > width or crop_box[3] > height:
            # PIL would pad with black outside the image; a silent border would misalign faces.
            raise ValueError(
                f"crop_box {crop_box} reaches outside image {path!r} of size "
                f"{width}x{height} (width x height)"
            )
        rgb = rgb.crop(crop_box)
    size = rgb.size
    if image_size is not None and rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), size


def _check_count(value: int | None, name: str, *, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        allowed = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _select_identities(
    files: dict[str, list[str]], *, min_images: int, max_identities: int | None, where: str
) -> tuple[list[str], int]:
    """Drops empty identity folders (with a warning), then applies the identity filters.

    Returns:
      (kept identity names in sorted order, number of empty folders dropped).
    """
    if not files:
        raise ValueError(
            f"no identity folder under {where}: expected root/<identity>/<image files>, "
            "one sub-folder per identity"
        )
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        warnings.warn(
            f"{len(empty)} of {len(files)} identity folders under {where} hold no image file "
            f"and are dropped (first: {empty[:3]})",
            stacklevel=3,
        )
    nonempty = [name for name, paths in files.items() if paths]
    kept = [name for name in nonempty if len(files[name]) >= min_images]
    if max_identities is not None:
        kept = kept[:max_identities]
    if not kept:
        raise ValueError(
            f"no identity left under {where}: {len(files)} identity folders, {len(nonempty)} "
            f"with image files, none with at least min_images={min_images} "
            f"(max_identities={max_identities})"
        )
    return kept, len(empty)


class ImageFolderSource:
    """Grain random-access source over `root/<identity>/<image files>`.

    Filters apply in this order: identities with fewer than `min_images` image files are dropped
    (counting all their files), each kept identity keeps its first `max_images` files in sorted
    order, and the first `max_identities` identities in sorted order are kept. Identity folders
    with no image file are dropped before that, counted in `num_empty_identities`, with a warning.

    Images are not checked at construction (decoding every file of a large folder is too slow);
    `on_bad_image` decides what `__getitem__` does with an unreadable file:
      "error": raise `BadImageError` naming the file.
      "skip": return the next readable image of the same identity (in sorted order, wrapping
        around), so the record duplicates a neighbour's image and keeps the right label and the
        path of the file actually returned. `num_skipped` counts unreadable files met by this
        process (grain worker processes keep their own count).
    A `crop_box` that reaches outside an image is a setting error and always raises.

    Attributes:
      labels: int32[N], identity label of each record.
      num_classes: number of identities kept, C.
      identity_names: [C] folder names, index = label.
      paths: [N] image paths, index = record.
      num_empty_identities: identity folders dropped for having no image file.
      num_skipped: unreadable files skipped so far ("skip" mode only).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        min_images: int = 1,
        max_images: int | None = None,
        max_identities: int | None = None,
        crop_box: Sequence[int] | None = None,
        image_size: int | None = None,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        on_bad_image: str = "error",
    ):
        if on_bad_image not in ON_BAD_IMAGE_CHOICES:
            raise ValueError(
                f"on_bad_image must be one of {ON_BAD_IMAGE_CHOICES}, got {on_bad_image!r}"
            )
        min_images = _check_count(min_images, "min_images", allow_none=False)
        max_images = _check_count(max_images, "max_images", allow_none=True)
        max_identities = _check_count(max_identities, "max_identities", allow_none=True)
        self.root = os.fspath(root)
        self.crop_box = check_crop_box(crop_box)
        self.image_size = check_image_size(image_size)
        self.extensions = _normalise_extensions(extensions)
        self.on_bad_image = on_bad_image

        files = scan_image_folder(self.root, self.extensions)
        kept, self.num_empty_identities = _select_identities(
            files,
            min_images=min_images,
            max_identities=max_identities,
            where=f"{self.root!r} (extensions {self.extensions}, max_images={max_images})",
        )
        self.identity_names = kept
        self.num_classes = len(kept)
        self.paths = []
        labels = []
        # Record range of each identity, for "skip" to stay within the identity.
        self._starts = np.zeros(len(kept) + 1, dtype=np.int64)
        for label, name in enumerate(kept):
            paths = files[name][:max_images]
            self.paths.extend(paths)
            labels.extend([label] * len(paths))
            self._starts[label + 1] = len(self.paths)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.num_skipped = 0
        self._lock = threading.Lock()
        self._by_stem: dict[tuple[str, str], int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        # grain checkpoints a DataLoader's source by its repr: it must name the exact records.
        return (
            f"ImageFolderSource(root={self.root!r}, num_records={len(self)}, "
            f"num_classes={self.num_classes}, crop_box={self.crop_box}, "
            f"image_size={self.image_size}, on_bad_image={self.on_bad_image!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # A lock cannot be pickled; grain's worker processes pickle the source.
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns {"image": uint8[H, W, 3], "label": np.int32, "path": str, "source_side":
        np.int32} of record `index` (`source_side`: the shorter side before resizing).

        Raises:
          IndexError: `index` outside [0, len).
          BadImageError: unreadable file ("error" mode), or no readable file left in the
            identity ("skip" mode).
        """
        index = operator.index(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"record index {index} outside [0, {len(self.paths)})")
        label = int(self.labels[index])
        if self.on_bad_image == "error":
            image, (width, height) = self._decode(self.paths[index])
            return {"image": image, "label": np.int32(label), "path": self.paths[index],
                    "source_side": np.int32(min(width, height))}
        start, stop = int(self._starts[label]), int(self._starts[label + 1])
        for offset in range(stop - start):
            j = start + (index - start + offset) % (stop - start)
            try:
                image, (width, height) = self._decode(self.paths[j])
            except BadImageError:
                with self._lock:
                    self.num_skipped += 1
                continue
            return {"image": image, "label": np.int32(label), "path": self.paths[j],
                    "source_side": np.int32(min(width, height))}
        raise BadImageError(
            self.paths[index],
            f"no readable image among the {stop - start} files of identity "
            f"{self.identity_names[label]!r} (on_bad_image='skip')",
        )

    def _decode(self, path: str) -> tuple[np.ndarray, tuple[int, int]]:
        return decode_image_with_size(path, crop_box=self.crop_box, image_size=self.image_size)

    def index_of(self, name: str, number: int) -> int:
        """Record index of LFW-style file `<name>/<name>_<number:04d>.<ext>` (number 1-based).

        Raises:
          KeyError: no such identity or file among the kept records (e.g. removed by a filter).
        """
        if self._by_stem is None:
            self._by_stem = {
                (self.identity_names[int(label)], os.path.splitext(os.path.basename(path))[0]): i
                for i, (path, label) in enumerate(zip(self.paths, self.labels, strict=True))
            }
        stem = f"{name}_{int(number):04d}"
        try:
            return self._by_stem[(name, stem)]
        except KeyError:
            where = "kept" if name in self.identity_names else "not among the kept identities"
            raise KeyError(
                f"no record for {name!r} image {number} (file stem {stem!r}) under "
                f"{self.root!r}; identity {name!r} is {where}"
            ) from None
