"""grain pipelines: training batches (shuffle, flip, normalise) and padded evaluation batches.

Records are dicts with an "image" (uint8 [S, S, 3]) and a "label". Augmentation is NumPy inside
grain transforms; batches have fixed shapes so that the jitted steps compile once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grain
import numpy as np
from tqdm import tqdm


class SubsetSource:
    """The records of `source` at `indices`, as a random-access source."""

    def __init__(self, source, indices: Sequence[int]):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(self.indices[index])]


class ArraySource:
    """Images and labels held in memory: rendering or decoding is paid once per run.

    Attributes:
      skipped: indices of the records of the source this was read from that could not be read
        and were left out (`materialize(..., skip=...)`).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, extras: dict | None = None):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int32)
        self.extras = extras or {}
        self.skipped: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        record = {"image": self.images[index], "label": self.labels[index]}
        for key, values in self.extras.items():
            record[key] = values[index]
        return record


def materialize(source, indices: Sequence[int] | None = None, *, desc: str = "loading",
                progress: bool = True, skip: tuple[type[Exception], ...] = ()) -> ArraySource:
    """Reads (renders, decodes) every record once into an `ArraySource`.

    Args:
      skip: exception types of a record that cannot be read: such records are left out and
        their indices listed in the result's `skipped`; any other error propagates.
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    images = labels = None
    extras: dict[str, list] = {}
    skipped: list[int] = []
    count = 0
    for index in tqdm(indices, desc=desc, disable=not progress, leave=False):
        try:
            record = source[int(index)]
        except skip:
            skipped.append(int(index))
            continue
        if images is None:
            images = np.empty((len(indices), *record["image"].shape), np.uint8)
            labels = np.empty(len(indices), np.int32)
            extras = {k: [] for k, v in record.items()
                      if k not in ("image", "label") and np.isscalar(v)}
        images[count] = record["image"]
        labels[count] = record["label"]
        for key, values in extras.items():
            values.append(record[key])
        count += 1
    if images is None:
        raise ValueError(f"{desc}: none of the {len(indices)} records could be read")
    result = ArraySource(images[:count], labels[:count],
                         {key: np.asarray(values) for key, values in extras.items()})
    result.skipped = skipped
    return result


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [-1, 1]: (x / 255 - 0.5) / 0.5, as arcface_torch."""
    return (images.astype(np.float32) / 255.0 - 0.5) / 0.5


def random_shift(image: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translates by up to `shift` pixels in each direction, filling with the edge pixels."""
    if shift <= 0:
        return image
    dy, dx = rng.integers(-shift, shift + 1, size=2)
    padded = np.pad(image, ((shift, shift), (shift, shift), (0, 0)), mode="edge")
    size_y, size_x = image.shape[:2]
    return padded[shift + dy:shift + dy + size_y, shift + dx:shift + dx + size_x]


def _train_record(record: dict, rng: np.random.Generator, shift: int) -> dict:
    image = random_shift(record["image"], shift, rng)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return {"image": normalize(image), "label": np.int32(record["label"])}


def train_dataset(source, *, batch_size: int, seed: int, shift: int = 0) -> grain.MapDataset:
    """Endless training batches: reshuffled every epoch, random shift of up to `shift` pixels,
    random horizontal flip, normalised.

    The result has random access (`dataset[step]` is the batch of that step), which makes the
    iterator's state a single index and resuming exact.
    """
    if len(source) < batch_size:
        raise ValueError(f"training set has {len(source)} images, fewer than one batch "
                         f"({batch_size}); lower the batch size or add images")
    return (
        grain.MapDataset.source(source)
        .seed(seed)
        .shuffle()
        .repeat(None)
        .random_map(lambda record, rng: _train_record(record, rng, shift))
        .batch(batch_size, drop_remainder=True)
    )


def train_iterator(dataset: grain.MapDataset, *,
                   prefetch_threads: int = 2) -> grain.DatasetIterator:
    """An iterator with background prefetch whose `get_state()` is saved with checkpoints."""
    options = grain.ReadOptions(num_threads=prefetch_threads, prefetch_buffer_size=4)
    return iter(dataset.to_iter_dataset(options))


def _pad_batch(batch: dict, size: int) -> dict:
    count = len(batch["image"])
    padded = {}
    for key, values in batch.items():
        pad = np.zeros((size - count, *values.shape[1:]), values.dtype)
        padded[key] = np.concatenate([values, pad]) if count < size else values
    padded["mask"] = np.arange(size) < count
    return padded


def _eval_record(record: dict, flip: bool) -> dict:
    image = record["image"][:, ::-1] if flip else record["image"]
    return {"image": normalize(image), "label": np.int32(record["label"])}


def eval_batches(source, *, batch_size: int, flip: bool = False) -> Iterator[dict]:
    """Every record once, in order, in fixed-size batches; the last is padded and `mask` marks
    the real rows."""
    dataset = (
        grain.MapDataset.source(source)
        .map(lambda record: _eval_record(record, flip))
        .batch(batch_size, drop_remainder=False)
        .map(lambda batch: _pad_batch(batch, batch_size))
    )
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))


class TargetSource:
    """Images with a per-image target vector for each orientation, and optionally a class for
    each orientation.

    Records are {"image", "target", "target_flipped", "index"}, plus {"label", "label_flipped"}
    with labels: `target` belongs to the image as stored, `target_flipped` to its mirror image (a
    frozen model's embeddings, say), so that a random flip keeps image and target in step; so do
    the labels (a label that does not depend on the orientation is given once).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, targets_flipped: np.ndarray,
                 labels: np.ndarray | None = None, labels_flipped: np.ndarray | None = None):
        if not len(images) == len(targets) == len(targets_flipped):
            raise ValueError(f"{len(images)} images but {len(targets)} and "
                             f"{len(targets_flipped)} targets")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.targets = np.asarray(targets, np.float32)
        self.targets_flipped = np.asarray(targets_flipped, np.float32)
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.labels_flipped = self.labels if labels_flipped is None else np.asarray(
            labels_flipped, np.int32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        record = {"image": self.images[index], "target": self.targets[index],
                  "target_flipped": self.targets_flipped[index], "index": np.int32(index)}
        if self.labels is not None:
            record.update(label=self.labels[index], label_flipped=self.labels_flipped[index])
        return record


def _target_record(record: dict, rng: np.random.Generator) -> dict:
    # Image, target and label flip together: the target is a frozen model's view of this image.
    suffix = "_flipped" if rng.random() < 0.5 else ""
    image = record["image"][:, ::-1] if suffix else record["image"]
    out = {"image": normalize(image), "target": record["target" + suffix],
           "index": record["index"]}
    if "label" in record:
        out["label"] = record["label" + suffix]
    return out


def target_dataset(source: TargetSource, *, batch_size: int, seed: int) -> grain.MapDataset:
    """Endless shuffled batches {"image", "target", "index"(, "label")} with random horizontal
    flips."""
    if len(source) < batch_size:
        raise ValueError(f"{len(source)} images are fewer than one batch ({batch_size}); lower "
                         "student.batch_size")
    return (
        grain.MapDataset.source(source)
        .seed(seed)
        .shuffle()
        .repeat(None)
        .random_map(_target_record)
        .batch(batch_size, drop_remainder=True)
    )


class ZipIterator:
    """Named iterators advanced together: `next()` gives {name: batch}; the state is their
    states, so that resuming restores every stream."""

    def __init__(self, **iterators):
        self.iterators = iterators

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return {name: next(it) for name, it in self.iterators.items()}

    def get_state(self) -> dict:
        return {name: it.get_state() for name, it in self.iterators.items()}

    def set_state(self, state: dict) -> None:
        for name, it in self.iterators.items():
            it.set_state(state[name])


# Enough P x K batches for any run; the dataset is lazy, so its length costs nothing.
_ENDLESS = 2**40


def pk_indices(groups_N: np.ndarray, *, groups_per_batch: int, images_per_group: int,
               rng: np.random.Generator) -> np.ndarray:
    """Record indices of one P x K batch: P groups, K images of each.

    Only groups with at least two images are drawn (a group of one has no pair to act on). Groups
    are drawn without replacement when there are at least P of them, images without replacement
    when a group has at least K.

    Returns:
      int64 [P * K], group by group.
    """
    names, counts = np.unique(groups_N, return_counts=True)
    eligible = names[counts >= 2]
    if len(eligible) == 0:
        raise ValueError("no group has two or more images: a P x K batch needs positives")
    chosen = rng.choice(eligible, size=groups_per_batch,
                        replace=len(eligible) < groups_per_batch)
    rows = []
    for group in chosen:
        members = np.flatnonzero(groups_N == group)
        rows.append(rng.choice(members, size=images_per_group,
                               replace=len(members) < images_per_group))
    return np.concatenate(rows)


def pk_dataset(source: TargetSource, groups_N: np.ndarray, *, groups_per_batch: int,
               images_per_group: int, seed: int) -> grain.MapDataset:
    """Endless P x K batches {"image", "target", "index"} of `source`, with random flips, so that
    every batch holds several images of each of its groups. Batch `i` depends only on (seed, i),
    which keeps resuming exact."""
    groups_N = np.asarray(groups_N)
    if len(groups_N) != len(source):
        raise ValueError(f"{len(groups_N)} group ids for {len(source)} records")

    def make_batch(_, rng: np.random.Generator) -> dict:
        rows = pk_indices(groups_N, groups_per_batch=groups_per_batch,
                          images_per_group=images_per_group, rng=rng)
        records = [_target_record(source[int(row)], rng) for row in rows]
        return {key: np.stack([r[key] for r in records]) for key in records[0]}

    return grain.MapDataset.range(0, _ENDLESS).seed(seed).random_map(make_batch)
