"""MXNet RecordIO (`.rec` with its `.idx`), read and written with NumPy and the standard library.

This is the container of insightface's training sets (CASIA-WebFace, MS1M, Glint360K as
`train.rec`, `train.idx`, `property`); mxnet is not needed to read or write it.

Framing (little-endian uint32 words): the magic `0xCED7230A`, then
`lrec = (cflag << 29) | length`, then `length` payload bytes, zero-padded to a multiple of 4. A
payload that holds the magic at a 4-aligned offset is split there into parts (cflag 1 = start,
2 = middle, 3 = end; 0 = a whole record); a reader rejoins the parts with the magic between them.

Payload: the header `struct "<IfQQ"` (flag, label, id, id2). When `flag > 0`, `flag` float32
labels follow the header and `label` is unused; the rest is the data (an encoded image).

`.idx`: text, one `key<TAB>byte_offset` line per record; records are looked up by key.

    with RecordIOWriter("train.rec") as writer:
        writer.write(1, pack_payload(3.0, jpeg_bytes, id=1))
    records = IndexedRecordIO("train.rec")
    header, data = unpack_payload(records.read(1))
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_RECORD_BYTES = 1 << 29  # the length field has 29 bits
_LENGTH_MASK = MAX_RECORD_BYTES - 1
_PART_HEADER = struct.Struct("<II")
HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes
# Records framed and checked when an index opens: the first, the last, and evenly spaced ones
# between, so that a truncated file or an index of another file is found before any training.
_RECORDS_CHECKED_AT_OPEN = 16


class RecordIOError(ValueError):
    """A `.rec`/`.idx` pair that is truncated, corrupt or inconsistent.

    Attributes:
      path: the file at fault.
      offset: byte offset in `path` where the problem is (None when not about one place).
      key: the record key concerned, if any.
    """

    def __init__(self, path: str, reason: str, *, offset: int | None = None,
                 key: int | None = None):
        where = str(path)
        if key is not None:
            where += f", key {key}"
        if offset is not None:
            where += f", byte offset {offset}"
        super().__init__(f"{where}: {reason}")
        self.path, self.offset, self.key = str(path), offset, key


# ----------------------------------------------------------------------------- framing


def _part(cflag: int, data: bytes) -> bytes:
    return MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(data)) + data


def frame_record(payload: bytes) -> bytes:
    """The bytes that mxnet's `RecordIOWriter::WriteRecord` writes for one payload.

    Args:
      payload: the record's bytes, shorter than 2**29.

    Returns:
      One part (cflag 0) or, where the payload holds the magic at a 4-aligned offset, parts
      split there (cflags 1, 2 ..., 3) without the magic; zero padding to a multiple of 4.

    Raises:
      ValueError: payload of 2**29 bytes or more.
    """
    if len(payload) >= MAX_RECORD_BYTES:
        raise ValueError(f"a RecordIO record holds fewer than 2**29 bytes, got {len(payload)}")
    words = np.frombuffer(payload, dtype="<u4", count=len(payload) // 4)
    splits = (np.flatnonzero(words == MAGIC) * 4).tolist()
    parts, start = [], 0
    for split in splits:
        parts.append(_part(1 if start == 0 else 2, payload[start:split]))
        start = split + 4
    parts.append(_part(3 if splits else 0, payload[start:]))
    # Parts before the last have aligned lengths, so only the last is padded.
    parts.append(bytes(-len(payload) % 4))
    return b"".join(parts)


def unframe_record(buffer: bytes, *, path: str, offset: int, end_reason: str,
                   key: int | None = None, index_path: str | None = None) -> bytes:
    """Reads one record, rejoining split parts, from `buffer` (the file from `offset` on).

    Args:
      buffer: bytes that start at the record's first magic; the record must end within them.
      path, offset: the file and the buffer's offset in it, for error messages.
      end_reason: what ends `buffer` ("the end of the file", "the next record"), for errors.
      key, index_path: the record's key and the index that placed it there, for errors.

    Returns:
      The payload.

    Raises:
      RecordIOError: no magic where a part should start, a continuation flag out of sequence,
        or a part running past the end of `buffer`.
    """
    index = f"the index {index_path}" if index_path else "its index"
    pos, parts = 0, []
    while True:
        at = offset + pos
        if pos + 8 > len(buffer):
            raise RecordIOError(path, f"record part header cut short by {end_reason} "
                                f"({len(buffer) - pos} of 8 bytes): truncated file", offset=at,
                                key=key)
        magic, lrec = _PART_HEADER.unpack_from(buffer, pos)
        if magic != MAGIC:
            raise RecordIOError(path, f"no RecordIO magic 0x{MAGIC:08X} here (found "
                                f"0x{magic:08X}): a corrupt file, or {index} disagrees with it",
                                offset=at, key=key)
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        valid = (0, 1) if not parts else (2, 3)
        if cflag not in valid:
            raise RecordIOError(path, f"continuation flag {cflag} where {valid[0]} or "
                                f"{valid[1]} is expected: corrupt file", offset=at, key=key)
        padded = (length + 3) & ~3
        if pos + 8 + padded > len(buffer):
            raise RecordIOError(path, f"record part of {length} bytes runs past {end_reason} "
                                f"({len(buffer) - pos - 8} bytes left): a truncated or corrupt "
                                f"file, or {index} disagrees with it", offset=at, key=key)
        parts.append(buffer[pos + 8:pos + 8 + length])
        pos += 8 + padded
        if cflag in (0, 3):
            return MAGIC_BYTES.join(parts)


# ----------------------------------------------------------------------------- payload header


@dataclasses.dataclass(frozen=True)
class RecordHeader:
    """The `IfQQ` header of a payload; `labels` holds the float32 label array when flag > 0."""

    flag: int
    label: float
    id: int
    id2: int
    labels: np.ndarray | None = None


def pack_payload(label: float | Sequence[float], data: bytes = b"", *, id: int = 0,
                 id2: int = 0) -> bytes:
    """A payload as `mx.recordio.pack`: a scalar label in the header (flag 0), or a label
    array after it (flag = its size).

    Args:
      label: a number, or a sequence of numbers stored as float32.
      data: the record's data (an encoded image), possibly empty.
      id, id2: the header's two uint64 fields.
    """
    if np.ndim(label) == 0:
        return HEADER.pack(0, float(label), id, id2) + data
    labels = np.asarray(label, dtype="<f4").reshape(-1)
    return HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + data


def unpack_payload(payload: bytes, *, path: str = "<payload>", key: int | None = None,
                   offset: int | None = None) -> tuple[RecordHeader, bytes]:
    """Splits a payload into its header and data, as `mx.recordio.unpack`.

    Raises:
      RecordIOError: the payload is shorter than its header and label array.
    """
    if len(payload) < HEADER.size:
        raise RecordIOError(path, f"payload of {len(payload)} bytes is shorter than the "
                            f"{HEADER.size}-byte IfQQ header", key=key, offset=offset)
    flag, label, id_, id2 = HEADER.unpack_from(payload)
    labels = None
    start = HEADER.size
    if flag > 0:
        if len(payload) < start + 4 * flag:
            raise RecordIOError(path, f"header announces {flag} float labels, the payload holds "
                                f"{len(payload) - start} bytes after the header", key=key,
                                offset=offset)
        labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=start).copy()
        start += 4 * flag
    return RecordHeader(flag, label, id_, id2, labels), payload[start:]


# ----------------------------------------------------------------------------- index


def _parse_index_lines(text: str, path: str) -> np.ndarray:
    """(key, offset) int64 [N, 2] from `.idx` text; the slow walk runs only to name a bad line."""
    lines = text.splitlines()
    fields = text.split()
    nonblank = sum(1 for line in lines if line.strip())
    if len(fields) == 2 * nonblank:
        try:
            return np.asarray(fields, dtype=np.int64).reshape(-1, 2)
        except ValueError:
            pass
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            ok = len(parts) == 2 and int(parts[0]) >= 0 and int(parts[1]) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise RecordIOError(path, f"line {number}: expected 'key<TAB>byte_offset' with two "
                                f"non-negative integers, got {line!r}")
    raise RecordIOError(path, "unreadable index")  # unreachable: the walk names the bad line


def read_index(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a `.idx` file.

    Returns:
      (keys int64 [N], offsets int64 [N]), sorted by key.

    Raises:
      FileNotFoundError: no such file.
      RecordIOError: a malformed line, a negative number or a key listed twice.
    """
    path = os.fspath(idx_path)
    with open(path, encoding="ascii", errors="replace") as f:
        table = _parse_index_lines(f.read(), path)
    if len(table) and table.min() < 0:
        raise RecordIOError(path, "negative key or byte offset")
    order = np.argsort(table[:, 0], kind="stable")
    keys, offsets = table[order, 0], table[order, 1]
    repeated = np.flatnonzero(np.diff(keys) == 0)
    if len(repeated):
        raise RecordIOError(path, f"key {keys[repeated[0]]} is listed more than once")
    return keys, offsets


class IndexedRecordIO:
    """Random access to the records of a `.rec` file through its `.idx`, by key.

    Opening reads the index and checks it against the `.rec`: every offset inside the file,
    and the framing of the first, the last and evenly spaced records between them (which finds
    a truncated file or an index of another file). Every read checks the framing of its record
    again, so a bad record is reported where it is met, never returned.

    Reads use `os.pread` on one descriptor, which threads share safely; a copy pickled into a
    worker process opens its own.

    Attributes:
      rec_path, idx_path: the files.
      keys: int64 [N] sorted keys; offsets: int64 [N] their byte offsets.
      size: the `.rec` size in bytes.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = (os.path.splitext(self.rec_path)[0] + ".idx" if idx_path is None
                         else os.fspath(idx_path))
        for path in (self.rec_path, self.idx_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"RecordIO file {path!r} does not exist")
        self.size = os.path.getsize(self.rec_path)
        self.keys, self.offsets = read_index(self.idx_path)
        # Each record ends at the next indexed record or at the end of the file.
        order = np.argsort(self.offsets, kind="stable")
        ends = np.empty_like(self.offsets)
        ends[order] = np.append(self.offsets[order][1:], self.size)
        self._ends = ends
        self._fd = os.open(self.rec_path, os.O_RDONLY)
        self._check_offsets()
        self._check_sample()

    def _check_offsets(self) -> None:
        past = np.flatnonzero(self.offsets + 8 > self.size)
        if len(past):
            i = past[np.argmin(self.offsets[past])]  # the first record lost
            raise RecordIOError(
                self.idx_path, f"key {self.keys[i]} points at byte offset {self.offsets[i]}, "
                f"past the end of {self.rec_path} ({self.size} bytes; {len(past)} such key(s)): "
                "a truncated .rec, or an .idx of another file", offset=int(self.offsets[i]))
        repeated = np.flatnonzero(np.diff(np.sort(self.offsets)) == 0)
        if len(repeated):
            offset = int(np.sort(self.offsets)[repeated[0]])
            raise RecordIOError(self.idx_path, f"two keys point at byte offset {offset}",
                                offset=offset)

    def _check_sample(self) -> None:
        if not len(self.keys):
            return
        count = min(len(self.keys), _RECORDS_CHECKED_AT_OPEN)
        positions = np.unique(np.linspace(0, len(self.keys) - 1, count).round().astype(int))
        last = int(np.argmax(self.offsets))  # the record a truncation cuts
        for position in {*positions.tolist(), last}:
            self.read(int(self.keys[position]))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        i = np.searchsorted(self.keys, key)
        return bool(i < len(self.keys) and self.keys[i] == key)

    def __getstate__(self) -> dict[str, Any]:
        # A descriptor does not survive pickling into a worker process; it reopens there.
        state = self.__dict__.copy()
        del state["_fd"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fd = os.open(self.rec_path, os.O_RDONLY)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _position(self, key: int) -> int:
        i = int(np.searchsorted(self.keys, key))
        if i == len(self.keys) or self.keys[i] != key:
            raise KeyError(f"key {key} is not in {self.idx_path} ({len(self.keys)} keys)")
        return i

    def offset_of(self, key: int) -> int:
        """Byte offset of record `key`.

        Raises:
          KeyError: `key` is not in the index (the message names the `.idx` file).
        """
        return int(self.offsets[self._position(key)])

    def read(self, key: int) -> bytes:
        """The payload of record `key`, split parts rejoined.

        Raises:
          KeyError: `key` is not in the index.
          RecordIOError: the bytes at its offset are not a whole, well-framed record.
        """
        i = self._position(key)
        offset, end = int(self.offsets[i]), int(self._ends[i])
        buffer = os.pread(self._fd, end - offset, offset)
        end_reason = ("the end of the file" if end == self.size
                      else f"the next indexed record (byte offset {end})")
        if len(buffer) < end - offset:  # the file shrank since it was opened
            end_reason = "the end of the file"
        return unframe_record(buffer, path=self.rec_path, offset=offset, end_reason=end_reason,
                              key=key, index_path=self.idx_path)


class RecordIOWriter:
    """Writes a `.rec` and its `.idx` (one `key<TAB>offset` line per record), as mxnet's
    `MXIndexedRecordIO`. Use as a context manager, or call `close()`.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = (os.path.splitext(self.rec_path)[0] + ".idx" if idx_path is None
                         else os.fspath(idx_path))
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w", encoding="ascii")
        self._keys: set[int] = set()

    def write(self, key: int, payload: bytes) -> None:
        """Appends one record under `key`.

        Raises:
          ValueError: a negative or repeated key, or a payload of 2**29 bytes or more.
        """
        key = int(key)
        if key < 0 or key in self._keys:
            raise ValueError(f"record key {key} is negative or already written to "
                             f"{self.rec_path}")
        self._keys.add(key)
        offset = self._rec.tell()
        self._rec.write(frame_record(payload))
        self._idx.write(f"{key}\t{offset}\n")

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
