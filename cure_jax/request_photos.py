"""The photos of a forget request: read from a folder, hashed, and made into the model's input.

A request is a flat folder of photos of one person; every visible file is a photo. Each file's
sha256 identifies it, and the sorted digests identify the request (`request_key`), so that a
request made again is recognised whatever the files are called.

Two ways to the model's input (uint8 [P, S, S, 3], S = `data.image_size`):

- detection (default): each photo is turned upright by its EXIF orientation, YuNet finds its
  face and the five-point warp takes it to the ArcFace template at S pixels
  (`data_pipelines.align`); a photo with no face or with several faces stops the request.
- `aligned=True`: the photos are face crops already prepared like the training images; they
  are decoded, cropped (`data.crop_box`) and resized exactly as training images are, and no
  detector runs.

Making requests for the checks: `write_holdout_photos` writes held-out images of a training
identity (images the model never trained on) into a folder, `write_unseen_photos` photos of a
person who is not in the training set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil

import numpy as np
from PIL import Image

from cure_jax.align import read_photo
from cure_jax.export import file_sha256
from data_pipelines.sources.image_folder import BadImageError, decode_image, scan_image_folder
from data_pipelines.sources.synthetic import SyntheticFaces

# Unseen synthetic people are rendered from global identity ids past the verification ones.
UNSEEN_IDENTITY_OFFSET = 2_000_000


class PhotoError(ValueError):
    """Photos that cannot make a request: none, unreadable, no face, several faces."""


@dataclasses.dataclass(frozen=True)
class RequestPhotos:
    """The photos of one request.

    Attributes:
      folder: where they were read.
      files: file names, sorted.
      sha256: hex digest of each file.
      images: uint8 [P, S, S, 3] the model's input, one per file.
    """

    folder: pathlib.Path
    files: list[str]
    sha256: list[str]
    images: np.ndarray

    @property
    def key(self) -> str:
        return request_key(self.sha256)


def request_key(digests: list[str]) -> str:
    """The identity of a request: the sha256 of its photos' sorted digests."""
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def list_photos(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Every visible file of a flat folder, sorted by name.

    Raises:
      PhotoError: the folder does not exist, holds sub-folders, or holds no file.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise PhotoError(f"--photos {folder} is not a folder")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    folders = [p.name for p in entries if p.is_dir()]
    if folders:
        raise PhotoError(f"--photos {folder} holds folders ({', '.join(folders[:3])}): a request "
                         "is one flat folder of photos of one person")
    files = [p for p in entries if p.is_file()]
    if not files:
        raise PhotoError(f"--photos {folder} holds no photo")
    return files


def photo_digests(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(file names, sha256 of each): what identifies a request, read before any decoding."""
    files = list_photos(folder)
    return [p.name for p in files], [file_sha256(p) for p in files]


def _detected_face(path: pathlib.Path, detector, size: int) -> tuple[np.ndarray | None, str]:
    """The aligned face of one photo, or None and why not."""
    from data_pipelines.align import Outcome, align_image

    try:
        image = read_photo(path)
    except BadImageError as err:
        return None, str(err)
    result = align_image(image, detector, size=size, multiple="skip")
    if result.outcome is Outcome.ALIGNED:
        return result.faces[0], ""
    if result.outcome is Outcome.NO_FACE:
        return None, f"{path.name}: no face found"
    return None, (f"{path.name}: {len(result.detections)} faces found; a request photo must "
                  "show the person alone")


def load_request_photos(folder: str | os.PathLike, *, image_size: int,
                        crop_box: tuple[int, ...] = (), aligned: bool = False,
                        detector=None) -> RequestPhotos:
    """Reads, hashes and prepares the photos of a request (module docstring).

    Args:
      folder: a flat folder of photos of one person.
      image_size: the model's input side S.
      crop_box: the training images' crop, applied with `aligned`.
      aligned: the photos are prepared like the training images: no detection.
      detector: a `YuNetDetector` (detection only; None builds the default one).

    Raises:
      PhotoError: naming every photo that is unreadable, shows no face or several faces.
    """
    files = list_photos(folder)
    faces, problems = [], []
    if aligned:
        for path in files:
            try:
                faces.append(decode_image(str(path), crop_box=tuple(crop_box) or None,
                                          image_size=image_size))
            except BadImageError as err:
                problems.append(str(err))
    else:
        from data_pipelines.align import YuNetDetector

        detector = detector or YuNetDetector().load()
        for path in files:
            face, problem = _detected_face(path, detector, image_size)
            if face is None:
                problems.append(problem)
            else:
                faces.append(face)
    if problems:
        raise PhotoError(f"{len(problems)} of the {len(files)} photos in {folder} cannot be "
                         "used: " + "; ".join(problems) + ". Remove or replace them.")
    return RequestPhotos(pathlib.Path(folder), [p.name for p in files],
                         [file_sha256(p) for p in files], np.stack(faces))


def _new_folder(folder: pathlib.Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty: write a request into a new folder")
    folder.mkdir(parents=True, exist_ok=True)


def identity_label(data, identity: str) -> int:
    """The label of a training identity given by number or by name.

    Raises:
      ValueError: no such identity, naming the valid range.
    """
    if identity.isdigit() and int(identity) < data.num_classes:
        return int(identity)
    if identity in data.identity_names:
        return data.identity_names.index(identity)
    raise ValueError(f"no training identity {identity!r}: give a number in [0, "
                     f"{data.num_classes}) or a name such as {data.identity_names[0]!r}")


def holdout_records(data, label: int, count: int, *, seed: int = 0) -> np.ndarray:
    """Record indices of `count` held-out images (never trained on) of identity `label`.

    Raises:
      ValueError: the identity has fewer held-out images than `count`.
    """
    rows = data.holdout_indices[data.records.labels[data.holdout_indices] == label]
    if len(rows) < count:
        raise ValueError(f"identity {label} ({data.identity_names[label]}) has {len(rows)} "
                         f"held-out images, fewer than --count {count}")
    return np.sort(np.random.default_rng(seed).choice(rows, count, replace=False))


def write_holdout_photos(data, identity: str, folder: str | os.PathLike, *, count: int = 5,
                         seed: int = 0) -> list[pathlib.Path]:
    """Writes `count` held-out images (never trained on) of a training identity into a new
    folder: the original files where the data has them, else lossless PNGs of the renders.

    Raises:
      ValueError: the identity is unknown or has fewer held-out images than `count`.
    """
    label = identity_label(data, identity)
    chosen = holdout_records(data, label, count, seed=seed)
    folder = pathlib.Path(folder)
    _new_folder(folder)
    paths = data.records.extras.get("path")
    written = []
    for record in chosen:
        if paths is not None:
            target = folder / pathlib.Path(str(paths[record])).name
            shutil.copyfile(str(paths[record]), target)
        else:
            target = folder / f"{data.identity_names[label]}_record{record}.png"
            Image.fromarray(data.records.images[record]).save(target)
        written.append(target)
    return written


def unseen_synthetic_faces(data_config, person: int, count: int) -> np.ndarray:
    """uint8 [count, S, S, 3]: renders of a synthetic person in neither the training set nor
    the verification set."""
    faces = SyntheticFaces(1, count, image_size=data_config.image_size, seed=data_config.seed,
                           identity_offset=UNSEEN_IDENTITY_OFFSET + person)
    return np.stack([faces[i]["image"] for i in range(count)])


def write_unseen_photos(data_config, data, person: str, folder: str | os.PathLike, *,
                        count: int = 5) -> list[pathlib.Path]:
    """Writes `count` photos of a person who is not in the training set into a new folder:
    a freshly rendered synthetic person (`person` a number), or the files of a person folder
    under `data.root` that the training set left out (`person` its name).

    Raises:
      ValueError: the person is in the training set or has fewer than `count` photos.
    """
    folder = pathlib.Path(folder)
    if data_config.source == "synthetic":
        if not person.isdigit():
            raise ValueError(f"--unseen {person!r}: give a number for synthetic people")
        faces = unseen_synthetic_faces(data_config, int(person), count)
        _new_folder(folder)
        targets = [folder / f"unseen_{person}_{i}.png" for i in range(count)]
        for face, target in zip(faces, targets, strict=True):
            Image.fromarray(face).save(target)
        return targets
    if person in data.identity_names:
        raise ValueError(f"{person} is a training identity; --unseen takes someone else")
    files = scan_image_folder(data_config.root).get(person, [])
    if len(files) < count:
        raise ValueError(f"{data_config.root}/{person} holds {len(files)} photos, fewer than "
                         f"--count {count}")
    _new_folder(folder)
    targets = [folder / pathlib.Path(path).name for path in files[:count]]
    for path, target in zip(files[:count], targets, strict=True):
        shutil.copyfile(path, target)
    return targets
