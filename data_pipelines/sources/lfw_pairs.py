"""The LFW verification protocol: `pairs.txt` and a source over the images its pairs use.

File format (View 2, `pairs.txt`): a header `folds n`, then `folds` blocks of `n` same-person
lines `name i j` and `n` different-person lines `name1 i name2 j`, fields separated by
whitespace, image numbers 1-based (`Name/Name_0001.jpg`). View 1 (`pairsDevTrain.txt`,
`pairsDevTest.txt`) has the header `n` alone and one block. Each block is one cross-validation
fold, and the protocol relies on that: folds are contiguous runs of `2 n` lines.

    source = PairsSource("lfw", image_size=112)
    idx_a, idx_b, issame, fold = source.pair_indices  # embed source[i] once, then compare pairs
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.sources.image_folder import check_crop_box, check_image_size, decode_image


@dataclasses.dataclass(frozen=True)
class Pair:
    """One verification pair: image `number_a` of `name_a` against `number_b` of `name_b`.

    `line` is the 1-based line of the pairs file it came from (for error messages only; it
    takes no part in equality).
    """

    name_a: str
    number_a: int
    name_b: str
    number_b: int
    issame: bool
    fold: int
    line: int = dataclasses.field(default=0, compare=False)


def _parse_header(fields: list[str], path: str) -> tuple[int, int]:
    try:
        values = [int(f) for f in fields]
    except ValueError:
        values = []
    if len(values) == 2 and len(fields) == 2:
        folds, per_class = values
    elif len(values) == 1 and len(fields) == 1:
        folds, per_class = 1, values[0]
    else:
        raise ValueError(
            f"{path}:1: header must be 'folds n' (pairs.txt) or 'n' (pairsDevTrain/DevTest), "
            f"got {' '.join(fields)!r}"
        )
    if folds < 1 or per_class < 1:
        raise ValueError(f"{path}:1: header values must be positive, got {' '.join(fields)!r}")
    return folds, per_class


def _parse_number(text: str, path: str, line: int) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{path}:{line}: image number must be a positive integer, got {text!r}")
    return number


def _parse_pair(fields: list[str], path: str, line: int, fold: int) -> Pair:
    if len(fields) == 3:
        name, i, j = fields
        return Pair(
            name, _parse_number(i, path, line), name, _parse_number(j, path, line), True, fold, line
        )
    if len(fields) == 4:
        name_a, i, name_b, j = fields
        if name_a == name_b:
            raise ValueError(
                f"{path}:{line}: a different-person line names {name_a!r} twice; a same-person "
                "pair is written 'name i j'"
            )
        return Pair(
            name_a,
            _parse_number(i, path, line),
            name_b,
            _parse_number(j, path, line),
            False,
            fold,
            line,
        )
    raise ValueError(
        f"{path}:{line}: expected 'name i j' (same person) or 'name1 i name2 j' (different "
        f"people), got {len(fields)} fields: {' '.join(fields)!r}"
    )


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Reads an LFW pairs file (View 2 `pairs.txt`, or View 1 `pairsDevTrain/DevTest.txt`).

    Blank lines are ignored; line numbers in errors count them.

    Args:
      path: the pairs file.

    Returns:
      The pairs in file order; `fold` is the 0-based block each belongs to.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: not text, bad header, wrong number of pair lines, a malformed line (naming the
        file and line number), or a fold without exactly `n` same and `n` different pairs.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text pairs file (byte {err.start} is not UTF-8); "
                         "expected LFW's pairs.txt layout") from None
    if "\x00" in text:
        raise ValueError(f"{path}: not a text pairs file (it holds NUL bytes); expected LFW's "
                         "pairs.txt layout")
    lines = [(k, line.split()) for k, line in enumerate(text.splitlines(), start=1)]
    lines = [(k, fields) for k, fields in lines if fields]
    if not lines:
        raise ValueError(f"{path}: empty pairs file")
    folds, per_class = _parse_header(lines[0][1], path)
    body = lines[1:]
    expected = folds * 2 * per_class
    if len(body) != expected:
        raise ValueError(
            f"{path}: header '{' '.join(lines[0][1])}' announces {folds} fold(s) x 2 x "
            f"{per_class} = {expected} pair lines, found {len(body)}"
        )
    pairs = [
        _parse_pair(fields, path, k, fold=n // (2 * per_class))
        for n, (k, fields) in enumerate(body)
    ]
    for fold in range(folds):
        block = pairs[fold * 2 * per_class : (fold + 1) * 2 * per_class]
        num_same = sum(p.issame for p in block)
        if num_same != per_class:
            raise ValueError(
                f"{path}: fold {fold} (lines {block[0].line}-{block[-1].line}) holds {num_same} "
                f"same-person pairs, the header announces {per_class}"
            )
    return pairs


def format_pairs(pairs: Sequence[Pair]) -> str:
    """The `pairs.txt` text of `pairs`, which `read_pairs` reads back equal.

    Args:
      pairs: in file order: fold by fold, `n` same pairs then `n` different pairs, the same
        `n` in every fold (View 2's layout).

    Raises:
      ValueError: pairs not in that layout, or a name holding whitespace (the format splits
        lines on it).
    """
    num_folds = max((p.fold for p in pairs), default=-1) + 1
    per_class = len(pairs) // (2 * num_folds) if num_folds else 0
    expected = [(fold, same) for fold in range(num_folds) for same in (True, False)
                for _ in range(per_class)]
    if not pairs or [(p.fold, p.issame) for p in pairs] != expected:
        raise ValueError("pairs must come fold by fold, n same then n different pairs per fold")
    lines = [f"{num_folds} {per_class}"]
    for p in pairs:
        for name in (p.name_a, p.name_b):
            if not name or any(c.isspace() for c in name):
                raise ValueError(f"identity name {name!r} cannot be written in a pairs file: "
                                 "it splits lines on whitespace")
        lines.append(f"{p.name_a} {p.number_a} {p.number_b}" if p.issame
                     else f"{p.name_a} {p.number_a} {p.name_b} {p.number_b}")
    return "\n".join(lines) + "\n"


def lfw_image_path(lfw_root: str, name: str, number: int) -> str:
    """`lfw_root/images/<name>/<name>_<number:04d>.jpg`, LFW's file naming."""
    return os.path.join(lfw_root, "images", name, f"{name}_{number:04d}.jpg")


class PairsSource:
    """Grain random-access source over the unique images that a pairs file uses.

    Each image is decoded once however many pairs use it; `pair_indices` says which records
    form each pair. Records are sorted by (name, number); labels index `identity_names`, the
    sorted names of the people in the pairs (labels here are for bookkeeping: verification
    needs only `issame`).

    Attributes:
      pairs: [P] the pairs, in file order.
      pair_indices: (idx_a int32[P], idx_b int32[P], issame bool[P], fold int32[P]), record
        indices into this source.
      labels: int32[N]; identity_names: [C]; num_classes: C; paths: [N].
    """

    def __init__(
        self,
        lfw_root: str | os.PathLike,
        pairs_path: str | os.PathLike | None = None,
        *,
        crop_box: Sequence[int] | None = None,
        image_size: int | None = None,
    ):
        self.lfw_root = os.fspath(lfw_root)
        self.pairs_path = (
            os.path.join(self.lfw_root, "pairs.txt")
            if pairs_path is None
            else os.fspath(pairs_path)
        )
        self.crop_box = check_crop_box(crop_box)
        self.image_size = check_image_size(image_size)
        if not os.path.isdir(self.lfw_root):
            raise FileNotFoundError(f"LFW root {self.lfw_root!r} is not a directory")
        self.pairs = read_pairs(self.pairs_path)

        keys = sorted(
            {(p.name_a, p.number_a) for p in self.pairs}
            | {(p.name_b, p.number_b) for p in self.pairs}
        )
        record_of = {key: i for i, key in enumerate(keys)}
        self.paths = [lfw_image_path(self.lfw_root, name, number) for name, number in keys]
        # Check every file now: a missing image found mid-evaluation would waste the run.
        missing = {i for i, p in enumerate(self.paths) if not os.path.isfile(p)}
        if missing:
            self._raise_missing(missing, record_of)
        self.identity_names = sorted({name for name, _ in keys})
        label_of = {name: c for c, name in enumerate(self.identity_names)}
        self.num_classes = len(self.identity_names)
        self.labels = np.asarray([label_of[name] for name, _ in keys], dtype=np.int32)
        self.pair_indices = (
            np.asarray([record_of[(p.name_a, p.number_a)] for p in self.pairs], dtype=np.int32),
            np.asarray([record_of[(p.name_b, p.number_b)] for p in self.pairs], dtype=np.int32),
            np.asarray([p.issame for p in self.pairs], dtype=bool),
            np.asarray([p.fold for p in self.pairs], dtype=np.int32),
        )

    def _raise_missing(self, missing: set[int], record_of: dict[tuple[str, int], int]) -> None:
        for p in self.pairs:
            for key in ((p.name_a, p.number_a), (p.name_b, p.number_b)):
                if record_of[key] in missing:
                    raise FileNotFoundError(
                        f"{self.pairs_path}:{p.line}: pair {p.name_a} {p.number_a} / "
                        f"{p.name_b} {p.number_b} needs {self.paths[record_of[key]]!r}, which "
                        f"does not exist ({len(missing)} missing image(s) in all)"
                    )

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"PairsSource(lfw_root={self.lfw_root!r}, pairs_path={self.pairs_path!r}, "
            f"num_records={len(self)}, crop_box={self.crop_box}, image_size={self.image_size})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns {"image": uint8[H, W, 3], "label": np.int32, "path": str} of record `index`.

        Raises:
          IndexError: `index` outside [0, len).
          BadImageError: the file cannot be decoded.
        """
        index = operator.index(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"record index {index} outside [0, {len(self.paths)})")
        image = decode_image(self.paths[index], crop_box=self.crop_box, image_size=self.image_size)
        return {"image": image, "label": np.int32(self.labels[index]), "path": self.paths[index]}
