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
    """Images and labels held in memory: rendering or decoding is paid once per run."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, extras: dict | None = None):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int32)
        self.extras = extras or {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        record = {"image": self.images[index], "label": self.labels[index]}
        for key, values in self.extras.items():
            record[key] = values[index]
        return record


def materialize(source, indices: Sequence[int] | None = None, *, desc: str = "loading",
                progress: bool = True) -> ArraySource:
    """Reads (renders, decodes) every record once into an `ArraySource`."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    first = source[int(indices[0])]
    images = np.empty((len(indices), *first["image"].shape), np.uint8)
    labels = np.empty(len(indices), np.int32)
    extra_keys = [k for k, v in first.items() if k not in ("image", "label") and np.isscalar(v)]
    extras = {k: np.empty(len(indices), np.asarray(first[k]).dtype) for k in extra_keys}
    for row, index in enumerate(tqdm(indices, desc=desc, disable=not progress, leave=False)):
        record = source[int(index)]
        images[row] = record["image"]
        labels[row] = record["label"]
        for key in extra_keys:
            extras[key][row] = record[key]
    return ArraySource(images, labels, extras)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [-1, 1]: (x / 255 - 0.5) / 0.5, as arcface_torch."""
    return (images.astype(np.float32) / 255.0 - 0.5) / 0.5


def _train_record(record: dict, rng: np.random.Generator) -> dict:
    image = record["image"]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return {"image": normalize(image), "label": np.int32(record["label"])}


def train_dataset(source, *, batch_size: int, seed: int) -> grain.MapDataset:
    """Endless training batches: reshuffled every epoch, random horizontal flip, normalised.

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
        .random_map(_train_record)
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
