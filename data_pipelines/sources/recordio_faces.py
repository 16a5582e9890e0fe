"""insightface training sets in RecordIO (`train.rec`, `train.idx`, `property`): a grain source,
and conversion from and to a folder per identity.

Layout (insightface `arcface_torch`): record 0 has flag 2 and labels `[id_start, id_end]`; image
records are keys `1 .. id_start - 1`, each storing its class index as a float label and an
encoded image (JPEG) as data; identity records `id_start .. id_end - 1` each hold
`[img_start, img_end)`, the contiguous key range of one class's images (class `c` is record
`id_start + c`). `property` is the text `num_classes,height,width`. Labels are float32, exact
below 2**24 classes. Identity names are not part of the format: the converter writes them to an
optional `identities.txt` (one name per line, in label order), which the source reads if present.

    faces = RecordIOFaces("faces_webface_112x112", image_size=112)
    faces[0]  # {"image": uint8[112, 112, 3], "label": np.int32, "key": np.int64}
    faces.identity_ranges[c]  # [start, end) record indices of identity c
"""

from __future__ import annotations

import io
import operator
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_pipelines.sources.image_folder import (
    BadImageError,
    check_crop_box,
    check_image_size,
    decode_image,
    scan_image_folder,
)
from data_pipelines.sources.recordio import (
    IndexedRecordIO,
    RecordIOError,
    RecordIOWriter,
    pack_payload,
    unpack_payload,
)

IDENTITIES_FILE = "identities.txt"
MAX_EXACT_LABEL = 1 << 24  # float32 holds every integer below this


def rec_paths(root: str | os.PathLike) -> tuple[str, str]:
    """(`.rec`, `.idx`) paths of `root`: a folder holding `train.rec`, or a `.rec` path."""
    root = os.fspath(root)
    rec = os.path.join(root, "train.rec") if os.path.isdir(root) else root
    return rec, os.path.splitext(rec)[0] + ".idx"


def read_identity_ranges(records: IndexedRecordIO) -> np.ndarray:
    """The `[img_start, img_end)` key range of every class, from the insightface header records.

    Checks that every key the header and identity records name is in the index, and that the
    ranges tile the image keys `1 .. id_start - 1` without gap or overlap.

    Returns:
      int64 [C, 2], row c for class c.

    Raises:
      RecordIOError: record 0 is not an insightface header, a named key is missing from the
        index, or the ranges do not tile the image keys.
    """
    rec, idx = records.rec_path, records.idx_path
    if 0 not in records:
        raise RecordIOError(idx, "no record 0: not an insightface .rec (record 0 holds "
                            "[id_start, id_end])", key=0)
    header, _ = unpack_payload(records.read(0), path=rec, key=0, offset=records.offset_of(0))
    if header.flag != 2:
        raise RecordIOError(rec, f"record 0 has flag {header.flag}; an insightface .rec has "
                            "flag 2 and the labels [id_start, id_end] there", key=0,
                            offset=records.offset_of(0))
    id_start, id_end = (int(v) for v in header.labels)
    num_classes = id_end - id_start
    if not 1 <= id_start <= id_end or num_classes >= MAX_EXACT_LABEL:
        raise RecordIOError(rec, f"record 0 labels [id_start, id_end] = [{id_start}, {id_end}]"
                            f" need 1 <= id_start <= id_end and fewer than 2**24 classes", key=0)
    wanted = np.arange(1, id_end)
    missing = wanted[~np.isin(wanted, records.keys)]
    if len(missing):
        raise RecordIOError(idx, f"key {missing[0]} is missing ({len(missing)} of the keys "
                            f"1..{id_end - 1} that record 0 announces are missing)",
                            key=int(missing[0]))
    ranges = np.empty((num_classes, 2), np.int64)
    for c in range(num_classes):
        key = id_start + c
        head, _ = unpack_payload(records.read(key), path=rec, key=key)
        if head.flag != 2:
            raise RecordIOError(rec, f"identity record of class {c} has flag {head.flag}, not 2 "
                                "([img_start, img_end])", key=key, offset=records.offset_of(key))
        ranges[c] = head.labels
    # The ranges must tile 1 .. id_start - 1 in order: each starts where the previous ended.
    expected_starts = np.concatenate([[1], ranges[:-1, 1]])
    bad = np.flatnonzero((ranges[:, 0] != expected_starts) | (ranges[:, 1] < ranges[:, 0]))
    if len(bad) or (num_classes and ranges[-1, 1] != id_start):
        c = int(bad[0]) if len(bad) else num_classes - 1
        raise RecordIOError(rec, f"identity record of class {c} holds [{ranges[c, 0]}, "
                            f"{ranges[c, 1]}): the ranges must tile the image keys "
                            f"1..{id_start - 1} in class order", key=id_start + c)
    return ranges


def _read_names(folder: str, num_classes: int) -> list[str] | None:
    path = os.path.join(folder, IDENTITIES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f]
    if len(names) != num_classes:
        raise ValueError(f"{path} names {len(names)} identities, the .rec holds {num_classes}")
    return names


def _check_property(folder: str, num_classes: int) -> None:
    path = os.path.join(folder, "property")
    if not os.path.isfile(path):
        return
    with open(path, encoding="ascii") as f:
        text = f.read().strip()
    fields = text.split(",")
    if not fields[0].strip().isdigit() or int(fields[0]) != num_classes:
        raise ValueError(f"{path} reads {text!r}; the .rec's identity records count "
                         f"{num_classes} classes (expected '{num_classes},height,width')")


class RecordIOFaces:
    """Grain random-access source over an insightface `.rec`: `{"image", "label", "key"}`.

    Filters as `ImageFolderSource`: identities with fewer than `min_images` images are dropped,
    each keeps its first `max_images` records, and the first `max_identities` identities are
    kept; labels are then 0 .. C-1 in class order. Opening reads the index and the identity
    records and checks them against the `.rec` (`IndexedRecordIO`, `read_identity_ranges`);
    each read checks its record's framing, that its label is its identity's class, and that its
    image decodes, and raises `RecordIOError` naming the file, key and offset otherwise.

    Attributes:
      keys: int64 [N] record key of each record.
      labels: int32 [N]; num_classes: C; identity_names: [C] (`identities.txt`, else the
        class index zero-padded); names_from_file: whether `identities.txt` named them.
      class_ids: int64 [C] the `.rec` class of each kept identity.
      identity_ranges: int64 [C, 2] `[start, end)` record indices of each identity here.
      identity_key_ranges: int64 [C, 2] `[img_start, img_end)` keys of each identity in the file.
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
    ):
        rec, idx = rec_paths(root)
        self.records = IndexedRecordIO(rec, idx)
        self.crop_box = check_crop_box(crop_box)
        self.image_size = check_image_size(image_size)
        key_ranges = read_identity_ranges(self.records)
        folder = os.path.dirname(os.path.abspath(rec))
        _check_property(folder, len(key_ranges))
        names = _read_names(folder, len(key_ranges))
        self.names_from_file = names is not None
        if names is None:  # zero-padded class indices: sorted names keep the class order
            width = len(str(max(len(key_ranges) - 1, 0)))
            names = [f"{c:0{width}d}" for c in range(len(key_ranges))]
        counts = key_ranges[:, 1] - key_ranges[:, 0]
        kept = np.flatnonzero(counts >= max(1, min_images))[:max_identities]
        if not len(kept):
            raise ValueError(f"no identity in {rec} has at least min_images={min_images} images")
        ends = key_ranges[kept, 0] + np.minimum(counts[kept], max_images or counts.max())
        self.class_ids = kept.astype(np.int64)
        self.identity_key_ranges = np.stack([key_ranges[kept, 0], ends], axis=1)
        self.identity_names = [names[c] for c in kept]
        self.num_classes = len(kept)
        sizes = ends - key_ranges[kept, 0]
        self.keys = np.concatenate([np.arange(a, b) for a, b in self.identity_key_ranges])
        self.labels = np.repeat(np.arange(self.num_classes, dtype=np.int32), sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.identity_ranges = np.stack([starts[:-1], starts[1:]], axis=1)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        # grain checkpoints a DataLoader's source by its repr: it must name the exact records.
        return (f"RecordIOFaces(rec={self.records.rec_path!r}, num_records={len(self)}, "
                f"num_classes={self.num_classes}, crop_box={self.crop_box}, "
                f"image_size={self.image_size})")

    def encoded(self, index: int) -> tuple[bytes, int]:
        """(encoded image bytes as stored, label) of record `index`, label checked.

        Raises:
          IndexError: `index` outside [0, len).
          RecordIOError: a bad record, or a stored label that is not its identity's class.
        """
        index = operator.index(index)
        if not 0 <= index < len(self.keys):
            raise IndexError(f"record index {index} outside [0, {len(self.keys)})")
        key, label = int(self.keys[index]), int(self.labels[index])
        payload = self.records.read(key)
        header, data = unpack_payload(payload, path=self.records.rec_path, key=key,
                                      offset=self.records.offset_of(key))
        stored = header.labels[0] if header.flag > 0 else header.label
        if stored != self.class_ids[label]:
            raise RecordIOError(self.records.rec_path, f"image record stores label {stored}, but "
                                f"its identity record gives class {self.class_ids[label]}",
                                key=key, offset=self.records.offset_of(key))
        return data, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"image": uint8[H, W, 3] RGB, "label": np.int32, "key": np.int64} of record `index`.

        Raises:
          IndexError, RecordIOError: as `encoded`, or an image that does not decode.
        """
        data, label = self.encoded(index)
        key = int(self.keys[index])
        try:
            image = decode_image(io.BytesIO(data), crop_box=self.crop_box,
                                 image_size=self.image_size)
        except BadImageError as err:
            raise RecordIOError(self.records.rec_path, f"image does not decode: {err}", key=key,
                                offset=self.records.offset_of(key)) from None
        return {"image": image, "label": np.int32(label), "key": np.int64(key)}


def write_faces_rec(out_dir: str | os.PathLike, identity_names: Sequence[str],
                    counts: Sequence[int], images: Iterable[bytes], *,
                    image_shape: tuple[int, int]) -> int:
    """Writes encoded face images as an insightface `train.rec`/`train.idx` with `property` and
    `identities.txt` in `out_dir`.

    Args:
      identity_names: [C] names, label order.
      counts: [C] images of each identity.
      images: the encoded images, identity by identity (counts[0] of label 0 first, ...).
      image_shape: (height, width) for `property`.

    Returns:
      The number of images written.

    Raises:
      ValueError: 2**24 identities or more, or `images` not holding sum(counts) images.
    """
    if len(identity_names) >= MAX_EXACT_LABEL:
        raise ValueError(f"{len(identity_names)} identities: float32 labels are exact below 2**24")
    # Class c's images take the keys bounds[c] .. bounds[c + 1] - 1.
    bounds = np.concatenate([[1], 1 + np.cumsum(counts, dtype=np.int64)])
    labels = np.repeat(np.arange(len(counts)), counts)
    id_start = int(bounds[-1])
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    with RecordIOWriter(os.path.join(out_dir, "train.rec")) as writer:
        writer.write(0, pack_payload([id_start, id_start + len(counts)]))
        for key, data in enumerate(images, start=1):
            if key >= id_start:
                raise ValueError(f"more images than the {id_start - 1} that counts announce")
            writer.write(key, pack_payload(float(labels[key - 1]), data, id=key))
            written = key
        if written != id_start - 1:
            raise ValueError(f"{written} images for the {id_start - 1} that counts announce")
        for c in range(len(counts)):
            writer.write(id_start + c, pack_payload([bounds[c], bounds[c + 1]]))
    with open(os.path.join(out_dir, "property"), "w", encoding="ascii") as f:
        f.write(f"{len(counts)},{image_shape[0]},{image_shape[1]}")
    with open(os.path.join(out_dir, IDENTITIES_FILE), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in identity_names))
    return written


def folder_to_recordio(root: str | os.PathLike, out_dir: str | os.PathLike, *,
                       progress: bool = True) -> int:
    """Writes `root/<identity>/<image files>` as an insightface `.rec` (`write_faces_rec`) in
    `out_dir`; each image's bytes are stored as they are, so the conversion is exact.

    Identities follow sorted folder names (label c = c-th name), images sorted file names;
    folders without an image file are left out.

    Returns:
      The number of images written.

    Raises:
      ValueError: no image under `root`, or 2**24 identities or more.
    """
    files = {name: paths for name, paths in scan_image_folder(root).items() if paths}
    if not files:
        raise ValueError(f"no identity folder with image files under {os.fspath(root)!r}")
    paths = [path for paths in files.values() for path in paths]
    with Image.open(paths[0]) as first:
        width, height = first.size

    def read_all():
        for path in tqdm(paths, desc="writing train.rec", disable=not progress):
            with open(path, "rb") as f:
                yield f.read()

    return write_faces_rec(out_dir, list(files), [len(p) for p in files.values()], read_all(),
                           image_shape=(height, width))


def image_extension(data: bytes) -> str:
    """File extension of encoded image bytes, from their signature (".jpg", ".png", ".bin")."""
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    return ".bin"


def recordio_to_folder(root: str | os.PathLike, out_dir: str | os.PathLike, *,
                       progress: bool = True) -> int:
    """Writes the images of an insightface `.rec` as `out_dir/<name>/<name>_<n:04d>.<ext>`,
    bytes as stored; names from `identities.txt`, else the class index zero-padded (so that
    sorted folder names keep the class order).

    Returns:
      The number of images written.
    """
    faces = RecordIOFaces(root)
    names = faces.identity_names
    for label, (start, end) in enumerate(tqdm(faces.identity_ranges, desc="writing images",
                                              disable=not progress)):
        folder = os.path.join(out_dir, names[label])
        os.makedirs(folder, exist_ok=True)
        for number, index in enumerate(range(start, end), start=1):
            data, _ = faces.encoded(index)
            path = os.path.join(folder, f"{names[label]}_{number:04d}{image_extension(data)}")
            with open(path, "wb") as f:
                f.write(data)
    return len(faces)
