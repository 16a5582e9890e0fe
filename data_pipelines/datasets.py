"""Assembles the faces a run uses from its data config: training identities (with held-out
images per identity) and a verification set of pairs.

Synthetic data: training identities and verification identities are disjoint people rendered from
the same seed. Image folders, insightface RecordIO (`train.rec`) and prepared TFDS datasets:
verification comes from an LFW-style `pairs.txt` when one is given (every kept identity trains);
with neither a `pairs.txt` nor a `.bin`, a share of the identities (`holdout_identities`) does not
train and balanced pairs drawn among their images verify (`verification_pairs.py`). Any source
adds the insightface `.bin` verification sets listed in `verification_bins`.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from data_pipelines.pipelines import ArraySource, materialize
from data_pipelines.sources.image_folder import BadImageError, ImageFolderSource
from data_pipelines.sources.lfw_pairs import Pair, PairsSource, format_pairs
from data_pipelines.sources.recordio_faces import RecordIOFaces
from data_pipelines.sources.synthetic import SyntheticFaces, make_verification_pairs
from data_pipelines.sources.verification_bin import BinPairsSource
from data_pipelines.splits import holdout_split
from data_pipelines.verification_pairs import (
    NUM_FOLDS,
    as_pairs,
    draw_pairs,
    holdout_identities,
    max_pairs_per_fold,
)

# Verification identities start here, far past any training identity id.
VERIFICATION_IDENTITY_OFFSET = 1_000_000


@dataclasses.dataclass
class Verification:
    """Images and the pairs among them (indices into `source`)."""

    source: ArraySource
    idx_a: np.ndarray
    idx_b: np.ndarray
    issame: np.ndarray
    folds: np.ndarray | None  # explicit fold per pair (pairs.txt), or None for 10 contiguous
    # The person of each `source.labels` value, where the pairs may show training people (a
    # pairs file); None where they cannot (people held out of training) or are unknown (.bin).
    names: tuple[str, ...] | None = None


@dataclasses.dataclass
class FaceData:
    """Everything a run reads: training records, held-out records and verification pairs."""

    records: ArraySource  # every image of the training identities, in memory
    train_indices: np.ndarray  # into `records`
    holdout_indices: np.ndarray  # into `records`: unseen images of the training identities
    num_classes: int
    verification: Verification | None
    identity_names: list[str]
    # `.bin` verification sets by file name (e.g. "agedb_30.bin"), evaluated beside `verification`.
    bin_verifications: dict[str, Verification] = dataclasses.field(default_factory=dict)
    skipped_files: list[str] = dataclasses.field(default_factory=list)  # unreadable, left out
    # The pairs of `verification` when they were drawn among held-out identities (a run keeps
    # them as its verification_pairs.txt); empty when they came from a file or there are none.
    drawn_pairs: list[Pair] = dataclasses.field(default_factory=list)
    # `data.align`: per set ("train", "verification"), what the face search found in its photos
    # and which photos had no face (`alignment_summary`); empty without alignment.
    alignment: dict = dataclasses.field(default_factory=dict)


def load_face_data(config, *, progress: bool = True) -> FaceData:
    """Builds `FaceData` from a `DataConfig`."""
    if config.source == "synthetic":
        data = _synthetic(config, progress)
    elif config.source in ("folder", "recordio", "tfds"):
        data = _folder(config, progress)
    else:
        raise ValueError(f"unknown data.source {config.source!r}; valid: synthetic, folder, "
                         "recordio, tfds")
    data.bin_verifications = _bin_verifications(config, progress)
    return data


def _bin_verifications(config, progress: bool) -> dict[str, Verification]:
    """The `.bin` sets of `config.verification_bins`, images decoded at `config.image_size`."""
    found = {}
    for path in config.verification_bins:
        name = pathlib.Path(path).name
        if name in found:
            raise ValueError(f"data.verification_bins names {name!r} twice; give distinct files")
        pairs = BinPairsSource(path, crop_box=tuple(config.crop_box) or None,
                               image_size=config.image_size)
        source = materialize(pairs, desc=f"decoding {name}", progress=progress)
        idx_a, idx_b, issame, folds = pairs.pair_indices
        found[name] = Verification(source, idx_a, idx_b, issame, folds)
    return found


def _synthetic(config, progress: bool) -> FaceData:
    train = SyntheticFaces(config.num_identities, config.images_per_identity,
                           image_size=config.image_size, seed=config.seed)
    records = materialize(train, desc="rendering faces", progress=progress)
    train_idx, holdout_idx = holdout_split(records.labels, fraction=config.holdout_per_identity,
                                           seed=config.seed)
    verification = None
    if config.num_verification_identities > 0:
        held_out_people = SyntheticFaces(
            config.num_verification_identities, config.verification_images_per_identity,
            image_size=config.image_size, seed=config.seed,
            identity_offset=VERIFICATION_IDENTITY_OFFSET)
        source = materialize(held_out_people, desc="rendering verification faces",
                             progress=progress)
        idx_a, idx_b, issame = make_verification_pairs(
            source.labels, config.num_verification_pairs, seed=config.seed)
        verification = Verification(source, idx_a, idx_b, issame, balanced_folds(issame))
    names = [f"synthetic_{i:05d}" for i in range(config.num_identities)]
    return FaceData(records, train_idx, holdout_idx, config.num_identities, verification, names)


def balanced_folds(issame_P: np.ndarray, num_folds: int = 10) -> np.ndarray:
    """Fold ids that deal same and different pairs round-robin, so every fold holds both
    kinds in equal numbers (as LFW's 300 + 300 per fold)."""
    folds = np.empty(len(issame_P), np.int32)
    for kind in (True, False):
        members = np.flatnonzero(issame_P == kind)
        folds[members] = np.arange(len(members)) % num_folds
    return folds


def _training_source(config):
    """The source of `data.source` folder, recordio or tfds, with the folder filters."""
    crop = tuple(config.crop_box) or None
    # Photos to align keep their own size: the warp makes the crop.
    filters = dict(min_images=config.min_images, max_images=config.max_images or None,
                   crop_box=crop, image_size=None if config.align != "none" else config.image_size)
    if config.source == "tfds":
        if not config.tfds_name:
            raise ValueError("data.source=tfds needs data.tfds_name=<NAME[/CONFIG][:VERSION]> "
                             "of a prepared TFDS dataset (data.root: its data dir)")
        from data_pipelines.sources.tfds_faces import TfdsFaces  # optional extra

        return TfdsFaces(config.tfds_name, data_dir=config.root or None, **filters)
    if not config.root:
        what = ("folder holding train.rec" if config.source == "recordio"
                else "folder with one sub-folder per identity")
        raise ValueError(f"data.source={config.source} needs data.root=<{what}>")
    if config.source == "recordio":
        return RecordIOFaces(config.root, **filters)
    # Unreadable files are left out at decoding (`_folder`), never replaced by another image.
    return ImageFolderSource(config.root, on_bad_image="error", **filters)


def aligned(source, config, *, on_failure: str, progress: bool):
    """`source`'s photos aligned to the ArcFace template as `data.align` says (YuNet with its
    defaults, the largest of several faces), searched once here."""
    from data_pipelines.align import YuNetDetector  # OpenCV: the optional `align` extra
    from data_pipelines.sources.aligned import AlignedSource

    return AlignedSource(source, detector=YuNetDetector(), size=config.image_size,
                         multiple="largest", on_failure=on_failure, progress=progress)


def alignment_summary(source, paths: list[str], without_face: str) -> dict:
    """What the face search of an `AlignedSource` found: photos, outcome counts, and the photos
    without a face with what became of them (`without_face`)."""
    return {"photos": len(source.source),
            "outcomes": {outcome.value: count for outcome, count in source.outcomes.items()},
            "without_face": without_face,
            "without_face_files": [paths[index] for index in sorted(source.failures)]}


def _folder(config, progress: bool) -> FaceData:
    folder = _training_source(config)
    name = config.tfds_name if config.source == "tfds" else pathlib.Path(config.root).name
    skip = (BadImageError,) if config.on_bad_image == "skip" else ()
    alignment = {}
    photos, photo_index = folder, np.arange(len(folder))
    if config.align != "none":
        # A training photo without a face is left out: nothing else could stand for it.
        photos = aligned(folder, config, on_failure="drop", progress=progress)
        photo_index = photos.indices
        alignment["train"] = alignment_summary(photos, folder.paths, "left out")
    labels = folder.labels[photo_index]  # of each record of `photos`
    held_out = _held_out_identities(config, folder.labels)
    train_ids = np.setdiff1d(np.arange(folder.num_classes), held_out)
    records = materialize(photos, np.flatnonzero(np.isin(labels, train_ids)),
                          desc=f"decoding {name}", progress=progress, skip=skip)
    records.labels = np.searchsorted(train_ids, records.labels).astype(np.int32)  # 0 .. C-1
    skipped = [folder.paths[photo_index[index]] for index in records.skipped]
    verification, drawn = None, []
    if config.pairs:
        verification = _pairs_file_verification(config, alignment, progress)
    elif len(held_out):
        verification, drawn, skipped_held_out = _drawn_verification(
            config, folder, photos, photo_index, held_out, skip, progress)
        skipped += skipped_held_out
    if skipped:
        print(f"data.on_bad_image=skip: {len(skipped)} unreadable image file(s) left out "
              f"(first: {skipped[0]}); the run folder lists them in skipped_images.txt")
    if "source_side" in records.extras:
        warn_small_images(records.extras["source_side"], config.image_size, name)
    train_idx, holdout_idx = holdout_split(records.labels, fraction=config.holdout_per_identity,
                                           seed=config.seed)
    names = [folder.identity_names[c] for c in train_ids]
    return FaceData(records, train_idx, holdout_idx, len(train_ids), verification, names,
                    skipped_files=skipped, drawn_pairs=drawn, alignment=alignment)


def _pairs_file_verification(config, alignment: dict, progress: bool) -> Verification:
    """The pairs of `config.pairs`, an LFW-style file over the images under its folder; with
    `data.align`, what the face search found goes into `alignment["verification"]`."""
    pairs_path = pathlib.Path(config.pairs)
    pairs = PairsSource(str(pairs_path.parent), str(pairs_path),
                        crop_box=tuple(config.crop_box) or None,
                        image_size=None if config.align != "none" else config.image_size)
    images = pairs
    if config.align != "none":
        # Every pair must count, as the protocol has it: a photo without a face is resized.
        images = aligned(pairs, config, on_failure="resize", progress=progress)
        alignment["verification"] = alignment_summary(images, pairs.paths, "resized whole")
    source = materialize(images, desc="decoding verification pairs", progress=progress)
    idx_a, idx_b, issame, folds = pairs.pair_indices
    return Verification(source, idx_a, idx_b, issame, folds, names=tuple(pairs.identity_names))


def _held_out_identities(config, labels_N: np.ndarray) -> np.ndarray:
    """The identities kept out of training to draw verification pairs from: none when a pairs
    file or a `.bin` verifies, or `holdout_identities` is 0."""
    if config.pairs or config.verification_bins or not config.holdout_identities:
        return np.zeros(0, np.int64)
    try:
        return holdout_identities(labels_N, fraction=config.holdout_identities,
                                  seed=config.seed)
    except ValueError as error:
        raise ValueError(f"data.holdout_identities={config.holdout_identities}: {error}. "
                         f"{_OTHER_VERIFICATION}") from None


_OTHER_VERIFICATION = ("Give data.pairs or data.verification_bins instead, or set "
                       "data.holdout_identities=0 (no verification)")


def _drawn_verification(config, folder, photos, photo_index: np.ndarray, held_out: np.ndarray,
                        skip, progress: bool) -> tuple[Verification, list[Pair], list[str]]:
    """Balanced pairs (10 folds) drawn among the images of the `held_out` identities.

    `photos` is `folder` or its aligned faces, whose record k is `folder`'s `photo_index[k]`.

    Returns:
      (the verification set, its pairs as a pairs file names them, unreadable files left out).
    """
    source = materialize(photos, np.flatnonzero(np.isin(folder.labels[photo_index], held_out)),
                         desc="decoding held-out identities", progress=progress, skip=skip)
    most = max_pairs_per_fold(source.labels)
    wanted = config.num_verification_pairs // (2 * NUM_FOLDS)
    if most < 1:
        raise ValueError(
            f"data.holdout_identities={config.holdout_identities}: the {len(held_out)} "
            f"identities held out of training ({len(source)} images) give fewer than "
            f"{NUM_FOLDS} distinct same-person pairs, one per fold; raise it. "
            f"{_OTHER_VERIFICATION}")
    if most < wanted:
        print(f"data.num_verification_pairs={config.num_verification_pairs}: the "
              f"{len(held_out)} held-out identities allow {2 * NUM_FOLDS * most} distinct "
              "balanced pairs; verifying on those")
    idx_a, idx_b, issame, folds = draw_pairs(source.labels, pairs_per_fold=min(most, wanted),
                                             seed=config.seed)
    pairs = as_pairs(idx_a, idx_b, issame, folds, source.labels, folder.identity_names)
    try:
        format_pairs(pairs)  # a name that a pairs file cannot hold stops the run here
    except ValueError as error:
        raise ValueError(f"{error}. {_OTHER_VERIFICATION}") from None
    skipped = [folder.paths[photo_index[index]] for index in source.skipped]
    return Verification(source, idx_a, idx_b, issame, folds), pairs, skipped


def warn_small_images(source_side_N: np.ndarray, image_size: int, where: str) -> int:
    """Warns, with a count, about face images far smaller than the model's input (their
    upscaled pixels carry little of a face); returns the count."""
    small = int(np.sum(source_side_N < image_size // 2))
    if small:
        print(f"warning: {small} of {len(source_side_N)} images under {where} are smaller than "
              f"{image_size // 2} pixels on their short side, half of data.image_size="
              f"{image_size}; they are upscaled")
    return small
