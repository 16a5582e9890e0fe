"""insightface verification sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...) read safely,
and written from an LFW-style folder and pairs file.

A `.bin` is a pickle of `(bins, issame_list)`: `bins` holds encoded images (JPEG bytes), images
`2i` and `2i + 1` form pair `i`, and `issame_list[i]` says whether they show one person. The
common files were written by Python 2 (byte strings load with `encoding="bytes"`); insightface's
`lfw.bin` stores `issame_list` as a list of bools; some copies hold NumPy arrays (`bins` as
uint8 arrays, `issame_list` as a bool array).

Unpickling runs code named by the file, so the reader admits only what those files contain:
bytes (including Python 3's protocol-2 form, `_codecs.encode(text, "latin1")`), bytearray,
lists, tuples, bools, and NumPy bool / uint8 arrays and bool scalars. Any other global is
refused with `UnsafePickleError` naming it, before it is called.

    source = BinPairsSource("agedb_30.bin", image_size=112)
    idx_a, idx_b, issame, fold = source.pair_indices  # as lfw_pairs.PairsSource
"""

from __future__ import annotations

import importlib
import io
import operator
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.sources.image_folder import (
    BadImageError,
    check_crop_box,
    check_image_size,
    decode_image,
)
from data_pipelines.sources.lfw_pairs import lfw_image_path, read_pairs

NUM_FOLDS = 10  # arcface_torch: KFold(10, shuffle=False) over the pairs
_ARRAY_DTYPES = (np.dtype(bool), np.dtype(np.uint8))


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A `.bin` whose pickle names a global that a verification set never holds (a ValueError
    too: bad input, which the command lines report as one line)."""


class _NdarrayClass:
    """Stands for numpy.ndarray inside a `.bin` pickle: an argument of `_reconstruct`, not a
    callable that could allocate or build arrays of any dtype."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayClass()


def _numpy_core(module: str, name: str):
    # NumPy 2 writes `numpy._core.*`, NumPy 1 `numpy.core.*`; either file may meet either NumPy.
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")


def _checked_dtype(value: Any, where: str) -> np.dtype:
    text = value.decode("ascii") if isinstance(value, bytes) else value
    dtype = np.dtype(text) if isinstance(text, str | np.dtype) else None
    if dtype not in _ARRAY_DTYPES:
        raise UnsafePickleError(f"{where}: NumPy dtype {value!r} refused; a verification set "
                                "holds only bool and uint8 arrays")
    return dtype


class _BinUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` admits only what `.bin` verification sets contain."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")
        self.path = path
        reconstruct = _numpy_core("multiarray", "_reconstruct")
        frombuffer = _numpy_core("numeric", "_frombuffer")
        scalar = _numpy_core("multiarray", "scalar")

        def dtype(obj, align=False, copy=True):
            return np.dtype(_checked_dtype(obj, path), align=bool(align), copy=bool(copy))

        def array(cls, shape, typecode):
            # NumPy pickles an empty int8 array of the class, then sets its state (dtype, data).
            if cls is not _NDARRAY or tuple(shape) != (0,) or typecode not in (b"b", "b"):
                raise UnsafePickleError(f"{path}: _reconstruct({cls!r}, {shape!r}, {typecode!r}) "
                                        "refused; NumPy writes (ndarray, (0,), b'b')")
            return reconstruct(np.ndarray, (0,), b"b")

        def array_from_buffer(buffer, dtype_, shape, order):
            return frombuffer(buffer, _checked_dtype(dtype_, path), shape, order)

        def bool_scalar(dtype_, data):
            if _checked_dtype(dtype_, path) != np.dtype(bool):
                raise UnsafePickleError(f"{path}: NumPy scalar of dtype {dtype_!r} refused")
            return scalar(dtype_, data)

        def latin1_bytes(text, encoding="latin1"):
            # How Python 3 pickles bytes at protocol 2: the text of the bytes, latin-1 encoded.
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                raise UnsafePickleError(f"{path}: _codecs.encode({type(text).__name__}, "
                                        f"{encoding!r}) refused; only latin-1 text is bytes")
            return text.encode("latin-1")

        def byte_array(source=b"", encoding="latin-1"):
            if isinstance(source, str):
                return bytearray(source, encoding)
            if not isinstance(source, bytes | bytearray):
                raise UnsafePickleError(f"{path}: bytearray({type(source).__name__}) refused")
            return bytearray(source)

        # numpy.ndarray is admitted only as the class named to _reconstruct, never called.
        self.allowed = {"_reconstruct": array, "ndarray": _NDARRAY, "dtype": dtype,
                        "_frombuffer": array_from_buffer, "scalar": bool_scalar,
                        "encode": latin1_bytes, "bytearray": byte_array}
        self.modules = {"_reconstruct": ("numpy.core.multiarray", "numpy._core.multiarray"),
                        "scalar": ("numpy.core.multiarray", "numpy._core.multiarray"),
                        "_frombuffer": ("numpy.core.numeric", "numpy._core.numeric"),
                        "ndarray": ("numpy",), "dtype": ("numpy",), "encode": ("_codecs",),
                        "bytearray": ("builtins", "__builtin__")}

    def find_class(self, module: str, name: str):
        if module in self.modules.get(name, ()):
            return self.allowed[name]
        raise UnsafePickleError(
            f"{self.path}: the pickle names the global {module}.{name}, which a verification "
            "set never holds (admitted: bytes, bytearray, lists, tuples, bools, NumPy bool and "
            "uint8 arrays); refused without running it")


def _as_bytes(item: Any, index: int, path: str) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise ValueError(f"{path}: image {index} is a {type(item).__name__}, not encoded image "
                     "bytes")


def _as_issame(issame: Any, path: str) -> np.ndarray:
    if isinstance(issame, np.ndarray) and issame.dtype == bool and issame.ndim == 1:
        return issame.copy()
    if isinstance(issame, list | tuple) and all(isinstance(v, bool | np.bool_) for v in issame):
        return np.asarray(issame, dtype=bool)
    raise ValueError(f"{path}: issame_list must be a list of bools or a bool array, got "
                     f"{type(issame).__name__}")


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Reads a `.bin` verification set without running code from it.

    Returns:
      (images: [2P] encoded image bytes, issame: bool [P]).

    Raises:
      FileNotFoundError: no such file.
      UnsafePickleError: the pickle names any other global (the message names it).
      ValueError: not a `(bins, issame_list)` pair, or `len(bins) != 2 * len(issame_list)`.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            loaded = _BinUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a readable .bin pickle "
                             f"({type(err).__name__}: {err})") from None
    if not isinstance(loaded, tuple | list) or len(loaded) != 2:
        raise ValueError(f"{path}: a .bin holds the pair (bins, issame_list), got "
                         f"{type(loaded).__name__}")
    bins, issame = loaded
    if not isinstance(bins, list | tuple):
        raise ValueError(f"{path}: bins must be a list of encoded images, got "
                         f"{type(bins).__name__}")
    images = [_as_bytes(item, i, path) for i, item in enumerate(bins)]
    issame = _as_issame(issame, path)
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs; images 2i and "
                         "2i+1 form pair i, so there must be twice as many")
    return images, issame


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Writes `(images, issame)` as a `.bin` (pickle protocol 4: bytes and bools, no globals,
    readable by insightface's loaders and by `read_bin`)."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs: need 2 per pair")
    payload = ([bytes(image) for image in images], [bool(s) for s in issame])
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)


def pairs_to_bin(lfw_root: str | os.PathLike, pairs_path: str | os.PathLike,
                 out_path: str | os.PathLike) -> int:
    """Writes the pairs of an LFW-style pairs file as a `.bin`, each image's file bytes as
    stored (`lfw_root/images/<name>/<name>_<n:04d>.jpg`), pairs in file order.

    Returns:
      The number of pairs.
    """
    pairs = read_pairs(pairs_path)
    images = []
    for pair in pairs:
        for name, number in ((pair.name_a, pair.number_a), (pair.name_b, pair.number_b)):
            with open(lfw_image_path(os.fspath(lfw_root), name, number), "rb") as f:
                images.append(f.read())
    write_bin(out_path, images, [pair.issame for pair in pairs])
    return len(pairs)


def kfold_ids(num_pairs: int, num_folds: int = NUM_FOLDS) -> np.ndarray:
    """Fold of each pair as `KFold(num_folds, shuffle=False)`: contiguous, remainder first."""
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[: num_pairs % num_folds] += 1
    return np.repeat(np.arange(num_folds, dtype=np.int32), sizes)


class BinPairsSource:
    """Grain random-access source over the images of a `.bin`, with the face of
    `lfw_pairs.PairsSource`: record `i` is image `i` of the file, and `pair_indices` pairs
    records `2p` and `2p + 1` in 10 contiguous folds (arcface_torch's protocol).

    A `.bin` names no people: `labels` are -1 and `identity_names` is empty.

    Attributes:
      path: the file; images: [N] encoded bytes; pair_indices: (idx_a int32 [P], idx_b int32
      [P], issame bool [P], fold int32 [P]); labels: int32 [N] (-1); num_classes: 0.
    """

    def __init__(self, path: str | os.PathLike, *, crop_box: Sequence[int] | None = None,
                 image_size: int | None = None):
        self.path = os.fspath(path)
        self.crop_box = check_crop_box(crop_box)
        self.image_size = check_image_size(image_size)
        self.images, issame = read_bin(self.path)
        num_pairs = len(issame)
        pairs = np.arange(num_pairs, dtype=np.int32)
        self.pair_indices = (2 * pairs, 2 * pairs + 1, issame, kfold_ids(num_pairs))
        self.labels = np.full(len(self.images), -1, np.int32)
        self.identity_names: list[str] = []
        self.num_classes = 0

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"BinPairsSource(path={self.path!r}, num_records={len(self)}, "
                f"crop_box={self.crop_box}, image_size={self.image_size})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"image": uint8[H, W, 3] RGB, "label": np.int32(-1)} of image `index`.

        Raises:
          IndexError: `index` outside [0, len).
          ValueError: the image does not decode (naming the file and image index).
        """
        index = operator.index(index)
        if not 0 <= index < len(self.images):
            raise IndexError(f"record index {index} outside [0, {len(self.images)})")
        try:
            image = decode_image(io.BytesIO(self.images[index]), crop_box=self.crop_box,
                                 image_size=self.image_size)
        except BadImageError as err:
            raise ValueError(f"{self.path}: image {index} does not decode: {err}") from None
        return {"image": image, "label": np.int32(-1)}
