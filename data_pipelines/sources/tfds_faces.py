"""Face datasets in TFDS: prepared as `array_record` without TensorFlow, read through
`tfds.data_source` as a grain source.

Preparing (`prepare_folder_dataset`, `prepare_recordio_dataset`) writes a TFDS dataset
`<data_dir>/<name>/1.0.0/` whose `train` split holds `{"image": encoded image bytes as stored
(a string Tensor), "label": ClassLabel with the identity names}`, in identity order
(`disable_shuffling`), with the number of images of each identity in the dataset's metadata.
`tfds.features.Image` is not used: encoding it needs TensorFlow.

Reading (`TfdsFaces`) takes any prepared dataset by its TFDS name (`NAME[/CONFIG][:VERSION]`,
looked up in `data_dir` as `tfds.data_source` does) that has an image feature (encoded bytes,
`tfds.features.Image`, or a uint8 [H, W, C] Tensor) and an integer identity feature
(`ClassLabel`). Records come sorted by identity, so that each identity is a contiguous range.

tensorflow-datasets and array_record are an optional extra (`pip install "cure_jax[tfds]"`);
nothing here imports TensorFlow. What needs TensorFlow: `tfds.load`, `as_dataset` and writing
`tfds.features.Image` from pixels.

    prepare_folder_dataset("lfw/images", name="lfw_faces", data_dir="~/tensorflow_datasets")
    faces = TfdsFaces("lfw_faces", data_dir="~/tensorflow_datasets", image_size=112)
"""

from __future__ import annotations

import io
import operator
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines.sources.image_folder import (
    BadImageError,
    check_crop_box,
    check_image_size,
    decode_image,
    scan_image_folder,
)

VERSION = "1.0.0"
SPLIT = "train"
_COUNTS_KEY = "images_per_identity"


def import_tfds():
    """`tensorflow_datasets`, or an ImportError that says how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError("TFDS sources need tensorflow-datasets and array_record: "
                          'pip install "cure_jax[tfds]"') from err
    return tfds


# ----------------------------------------------------------------------------- preparing


def _builder_class(name: str, identity_names: list[str], counts: list[int],
                   examples: Callable[[], Iterator[tuple[int, dict]]], description: str):
    """A `GeneratorBasedBuilder` subclass named `name`, not registered in the TFDS catalog."""
    tfds = import_tfds()

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=description,
            features=tfds.features.FeaturesDict({
                # Encoded bytes as stored: exact, small, and written without TensorFlow.
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.ClassLabel(names=identity_names),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep identity order: each identity a contiguous range
            metadata=tfds.core.MetadataDict({_COUNTS_KEY: counts}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        yield from examples()

    namespace = {"VERSION": tfds.core.Version(VERSION), "name": name, "_info": _info,
                 "_split_generators": _split_generators,
                 "_generate_examples": _generate_examples}
    return type("FaceDataset", (tfds.core.GeneratorBasedBuilder,), namespace,
                skip_registration=True)


def _prepare(name: str, data_dir: str | os.PathLike, identity_names: list[str],
             counts: list[int], examples, description: str) -> str:
    tfds = import_tfds()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"TFDS dataset name {name!r} must be snake_case: [a-z][a-z0-9_]*")
    try:
        taken = tfds.builder_cls(name)
    except tfds.core.DatasetNotFoundError:
        taken = None
    if taken is not None:
        # tfds.data_source would build the catalog's dataset of that name, not this one.
        raise ValueError(f"TFDS name {name!r} belongs to the TFDS catalog ({taken.__module__}); "
                         f"choose another, e.g. {name + '_faces'!r}")
    cls = _builder_class(name, identity_names, counts, examples, description)
    builder = cls(data_dir=os.path.expanduser(os.fspath(data_dir)), file_format="array_record")
    builder.download_and_prepare()
    return os.fspath(builder.data_dir)


def prepare_folder_dataset(root: str | os.PathLike, *, name: str,
                           data_dir: str | os.PathLike) -> str:
    """Prepares `root/<identity>/<image files>` as the TFDS dataset `name` in `data_dir`.

    Identities follow sorted folder names, images sorted file names; each image's file bytes
    are stored as they are. Folders without an image file are left out.

    Returns:
      The prepared dataset's directory (`data_dir/name/1.0.0`).

    Raises:
      ValueError: no image under `root`, or a name that is not snake_case or is in the catalog.
    """
    files = {n: paths for n, paths in scan_image_folder(root).items() if paths}
    if not files:
        raise ValueError(f"no identity folder with image files under {os.fspath(root)!r}")

    def examples():
        key = 0
        for label, paths in enumerate(files.values()):
            for path in paths:
                with open(path, "rb") as f:
                    yield key, {"image": f.read(), "label": label}
                key += 1

    return _prepare(name, data_dir, list(files), [len(p) for p in files.values()], examples,
                    f"Faces of {os.fspath(root)}, one folder per identity.")


def prepare_recordio_dataset(root: str | os.PathLike, *, name: str,
                             data_dir: str | os.PathLike) -> str:
    """Prepares an insightface `.rec` (a folder holding `train.rec`, or its path) as the TFDS
    dataset `name` in `data_dir`, image bytes as stored, identities in class order.

    Returns:
      The prepared dataset's directory.
    """
    from data_pipelines.sources.recordio_faces import RecordIOFaces

    faces = RecordIOFaces(root)
    counts = (faces.identity_ranges[:, 1] - faces.identity_ranges[:, 0]).tolist()

    def examples():
        for index in range(len(faces)):
            data, label = faces.encoded(index)
            yield index, {"image": data, "label": label}

    return _prepare(name, data_dir, list(faces.identity_names), counts, examples,
                    f"Faces of {faces.records.rec_path} (insightface RecordIO).")


# ----------------------------------------------------------------------------- reading


def _pick_feature(features, wanted: str | None, kinds: tuple[str, ...], role: str,
                  default: str) -> str:
    if wanted is not None or default in features:
        key = wanted or default
        if key not in features:
            raise KeyError(f"no feature {key!r}; the dataset has {sorted(features)}")
        return key
    matches = [k for k, f in features.items() if type(f).__name__ in kinds]
    if len(matches) != 1:
        raise KeyError(f"cannot tell which feature is the {role} among {sorted(features)}; "
                       f"pass {role}_key")
    return matches[0]


def select_identities(labels: np.ndarray, *, min_images: int = 1, max_images: int | None = None,
                      max_identities: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Records sorted by identity, with `ImageFolderSource`'s filters (identities with at least
    `min_images`, the first `max_images` of each, the first `max_identities` identities).

    Args:
      labels: int [N] stored identity of each stored record.

    Returns:
      (order int64 [M]: stored record of each kept record, kept int64 [C]: stored identity of
      each new label 0 .. C-1).
    """
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    kept = np.flatnonzero(counts >= max(1, min_images))[:max_identities]
    take = np.minimum(counts[kept], max_images or len(labels))
    rows = [order[starts[c]:starts[c] + n] for c, n in zip(kept, take, strict=True)]
    return (np.concatenate(rows) if rows else np.zeros(0, np.int64)), classes[kept]


def _to_image(value: Any, crop_box, image_size) -> np.ndarray:
    """Encoded bytes or a uint8 [H, W, C] array to RGB uint8, cropped and resized as
    `decode_image` does."""
    if isinstance(value, bytes | np.bytes_):
        return decode_image(io.BytesIO(bytes(value)), crop_box=crop_box, image_size=image_size)
    pixels = np.asarray(value, np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:  # grayscale stored as [H, W, 1]
        pixels = pixels[..., 0]
    image = Image.fromarray(pixels).convert("RGB")
    if crop_box is not None:
        if crop_box[2] > image.size[0] or crop_box[3] > image.size[1]:
            raise ValueError(f"crop_box {crop_box} reaches outside an image of size "
                             f"{image.size[0]}x{image.size[1]} (width x height)")
        image = image.crop(crop_box)
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


class TfdsFaces:
    """Grain random-access source over a prepared TFDS face dataset: `{"image", "label"}`.

    Args:
      name: TFDS name, `NAME[/CONFIG][:VERSION]`.
      data_dir: where it was prepared (None: TFDS's default, `$TFDS_DATA_DIR` or
        `~/tensorflow_datasets`).
      split: the split to read.
      image_key, label_key: feature names (None: "image"/"label", else the only Image /
        ClassLabel feature).
      min_images, max_images, max_identities, crop_box, image_size: as `ImageFolderSource`.

    Attributes:
      labels: int32 [N]; num_classes: C; identity_names: [C];
      identity_ranges: int64 [C, 2] `[start, end)` record indices of each identity;
      stored_index: int64 [N] the record's index in the TFDS split.
    """

    def __init__(self, name: str, *, data_dir: str | os.PathLike | None = None,
                 split: str = SPLIT, image_key: str | None = None, label_key: str | None = None,
                 min_images: int = 1, max_images: int | None = None,
                 max_identities: int | None = None, crop_box: Sequence[int] | None = None,
                 image_size: int | None = None):
        tfds = import_tfds()
        self.name, self.split = name, split
        self.data_dir = None if data_dir in (None, "") else os.path.expanduser(os.fspath(data_dir))
        self.crop_box = check_crop_box(crop_box)
        self.image_size = check_image_size(image_size)
        builder = tfds.builder(name, data_dir=self.data_dir)
        features = builder.info.features
        self.image_key = _pick_feature(features, image_key, ("Image", "Tensor"), "image", "image")
        self.label_key = _pick_feature(features, label_key, ("ClassLabel",), "label", "label")
        # Image features stay encoded: decoding here applies the same crop and resize as files.
        decoders = ({self.image_key: tfds.decode.SkipDecoding()}
                    if type(features[self.image_key]).__name__ == "Image" else None)
        self._source = tfds.data_source(name, split=split, data_dir=self.data_dir,
                                        download=False, decoders=decoders)
        stored = self._stored_labels(builder)
        order, kept = select_identities(stored, min_images=min_images, max_images=max_images,
                                        max_identities=max_identities)
        if not len(kept):
            raise ValueError(f"no identity in TFDS {name!r} ({split}) has at least "
                             f"min_images={min_images} images")
        names = getattr(features[self.label_key], "names", None) or []
        self.class_ids = kept.astype(np.int64)
        self.identity_names = [names[c] if c < len(names) else str(c) for c in kept]
        self.num_classes = len(kept)
        self.stored_index = order.astype(np.int64)
        self.labels = np.searchsorted(kept, stored[order]).astype(np.int32)
        bounds = np.searchsorted(self.labels, np.arange(self.num_classes + 1))
        self.identity_ranges = np.stack([bounds[:-1], bounds[1:]], axis=1).astype(np.int64)

    def _stored_labels(self, builder) -> np.ndarray:
        """Identity of each stored record: from the metadata this module writes (unshuffled
        datasets), else read from every record."""
        counts = (builder.info.metadata or {}).get(_COUNTS_KEY)
        if counts is not None and builder.info.disable_shuffling and sum(counts) == len(
                self._source):
            return np.repeat(np.arange(len(counts)), counts)
        return np.asarray([int(self._source[i][self.label_key])
                           for i in range(len(self._source))], np.int64)

    def __len__(self) -> int:
        return len(self.stored_index)

    def __repr__(self) -> str:
        return (f"TfdsFaces(name={self.name!r}, data_dir={self.data_dir!r}, split={self.split!r},"
                f" num_records={len(self)}, num_classes={self.num_classes}, "
                f"crop_box={self.crop_box}, image_size={self.image_size})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"image": uint8[H, W, 3] RGB, "label": np.int32} of record `index`.

        Raises:
          IndexError: `index` outside [0, len).
          ValueError: the stored label is not the one indexed at open, or the image does not
            decode (naming the dataset and stored record).
        """
        index = operator.index(index)
        if not 0 <= index < len(self.stored_index):
            raise IndexError(f"record index {index} outside [0, {len(self.stored_index)})")
        stored = int(self.stored_index[index])
        example = self._source[stored]
        label = int(self.labels[index])
        where = f"TFDS {self.name!r} ({self.split}) record {stored}"
        if int(example[self.label_key]) != self.class_ids[label]:
            raise ValueError(f"{where}: stored label {example[self.label_key]} differs from the "
                             f"{self.class_ids[label]} its metadata announced")
        try:
            image = _to_image(example[self.image_key], self.crop_box, self.image_size)
        except BadImageError as err:
            raise ValueError(f"{where}: image does not decode: {err}") from None
        return {"image": image, "label": np.int32(label)}
