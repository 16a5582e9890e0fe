"""Tests for data_pipelines.sources.recordio: framing, payload header, index, reader, writer."""

import pickle
import struct

import numpy as np
import pytest

from data_pipelines.sources.recordio import (
    HEADER,
    MAGIC,
    MAGIC_BYTES,
    IndexedRecordIO,
    RecordIOError,
    RecordIOWriter,
    frame_record,
    pack_payload,
    read_index,
    unframe_record,
    unpack_payload,
)


def parts_of(framed: bytes) -> list[tuple[int, int]]:
    """(cflag, length) of each part of one framed record, walking the words directly."""
    pos, parts = 0, []
    while pos < len(framed):
        magic, lrec = struct.unpack_from("<II", framed, pos)
        assert magic == MAGIC
        parts.append((lrec >> 29, lrec & ((1 << 29) - 1)))
        pos += 8 + ((parts[-1][1] + 3) & ~3)
        if parts[-1][0] in (0, 3):
            break
    assert pos == len(framed)
    return parts


def unframe(framed: bytes) -> bytes:
    return unframe_record(framed, path="x.rec", offset=0, end_reason="the end of the file")


@pytest.mark.parametrize("length", range(10))
def test_frame_pads_to_four_bytes_and_round_trips(length):
    payload = bytes(range(1, length + 1))
    framed = frame_record(payload)
    assert len(framed) % 4 == 0
    assert framed == MAGIC_BYTES + struct.pack("<I", length) + payload + bytes(-length % 4)
    assert parts_of(framed) == [(0, length)]
    assert unframe(framed) == payload


def test_payload_holding_the_magic_is_split_and_rejoined():
    # Magic at aligned offsets 0, 8 and 12 (two in a row) and at the very end.
    payload = MAGIC_BYTES + b"abcd" + MAGIC_BYTES + MAGIC_BYTES + b"xy" + b"zw" + MAGIC_BYTES
    framed = frame_record(payload)
    # mxnet's WriteRecord: a part ends before each aligned magic, the magic itself is dropped.
    assert parts_of(framed) == [(1, 0), (2, 4), (2, 0), (2, 4), (3, 0)]
    assert unframe(framed) == payload


def test_magic_at_an_unaligned_offset_is_not_split():
    payload = b"ab" + MAGIC_BYTES + b"cd"
    assert parts_of(frame_record(payload)) == [(0, 8)]
    assert unframe(frame_record(payload)) == payload


def test_split_record_with_a_padded_tail():
    payload = b"1234" + MAGIC_BYTES + b"567"
    framed = frame_record(payload)
    assert framed == (MAGIC_BYTES + struct.pack("<I", (1 << 29) | 4) + b"1234"
                      + MAGIC_BYTES + struct.pack("<I", (3 << 29) | 3) + b"567\x00")
    assert unframe(framed) == payload


def test_pack_payload_matches_mxnet_layout():
    scalar = pack_payload(7.0, b"img", id=5, id2=6)
    assert scalar == struct.pack("<IfQQ", 0, 7.0, 5, 6) + b"img"
    array = pack_payload([3, 9], b"")
    assert array == struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.float32([3, 9]).tobytes()
    header, data = unpack_payload(array)
    assert (header.flag, data) == (2, b"") and header.labels.tolist() == [3.0, 9.0]
    header, data = unpack_payload(scalar)
    assert (header.flag, header.label, header.id, header.id2, data) == (0, 7.0, 5, 6, b"img")
    assert HEADER.size == 24


def test_unpack_payload_rejects_short_payloads():
    with pytest.raises(RecordIOError, match="shorter than the 24-byte"):
        unpack_payload(b"123", path="f.rec", key=3)
    with pytest.raises(RecordIOError, match="announces 4 float labels"):
        unpack_payload(struct.pack("<IfQQ", 4, 0.0, 0, 0) + b"12345678", path="f.rec")


def write_records(path, records: dict[int, bytes]) -> None:
    with RecordIOWriter(path) as writer:
        for key, payload in records.items():
            writer.write(key, payload)


RECORDS = {0: b"head", 5: MAGIC_BYTES * 3 + b"tail", 2: b"", 9: bytes(range(256)) * 3,
           3: b"x" * 13}


@pytest.fixture
def rec_file(tmp_path):
    path = tmp_path / "train.rec"
    write_records(path, RECORDS)
    return path


def test_writer_and_reader_round_trip_by_key(rec_file):
    records = IndexedRecordIO(rec_file)
    assert records.keys.tolist() == sorted(RECORDS)
    for key, payload in RECORDS.items():
        assert records.read(key) == payload
    lines = (rec_file.with_suffix(".idx")).read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(k) for k in RECORDS]
    assert lines[0] == "0\t0"


def test_index_is_by_key_not_by_line(rec_file):
    idx = rec_file.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(reversed(lines)) + "\n\n")
    records = IndexedRecordIO(rec_file)
    assert all(records.read(key) == payload for key, payload in RECORDS.items())
    keys, offsets = read_index(idx)
    assert keys.tolist() == sorted(RECORDS) and offsets[0] == 0


def test_reader_survives_pickling(rec_file):
    records = IndexedRecordIO(rec_file)
    records.read(5)  # opens the descriptor
    clone = pickle.loads(pickle.dumps(records))
    assert clone.read(9) == RECORDS[9]


def test_missing_key_names_the_index(rec_file):
    with pytest.raises(KeyError, match=r"key 4 is not in .*train\.idx"):
        IndexedRecordIO(rec_file).read(4)


def test_malformed_index_line_is_named(rec_file):
    idx = rec_file.with_suffix(".idx")
    idx.write_text(idx.read_text() + "7\tabc\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: line 6: expected 'key<TAB>byte_offset'"):
        IndexedRecordIO(rec_file)


def test_repeated_key_is_refused(rec_file):
    idx = rec_file.with_suffix(".idx")
    idx.write_text(idx.read_text() + "2\t0\n")
    with pytest.raises(RecordIOError, match="key 2 is listed more than once"):
        IndexedRecordIO(rec_file)


def test_truncated_rec_fails_when_opened(rec_file):
    data = rec_file.read_bytes()
    rec_file.write_bytes(data[:-5])  # cuts the last record
    with pytest.raises(RecordIOError) as err:
        IndexedRecordIO(rec_file)
    message = str(err.value)
    assert "train.rec" in message and "byte offset" in message and "truncated" in message
    assert err.value.key == 3 and err.value.path.endswith("train.rec")


def test_rec_cut_before_indexed_records_names_the_index(rec_file):
    records = IndexedRecordIO(rec_file)
    rec_file.write_bytes(rec_file.read_bytes()[:records.offset_of(9)])
    with pytest.raises(RecordIOError, match=r"train\.idx.*key 9 points at byte offset \d+, past "
                       r"the end of .*train\.rec"):
        IndexedRecordIO(rec_file)


def test_index_that_disagrees_with_the_rec_fails_at_first_bad_read(tmp_path):
    # Many records, so that one is not among those checked at open.
    payloads = {k: bytes([k % 256]) * (8 + k % 5) for k in range(100)}
    rec = tmp_path / "many.rec"
    write_records(rec, payloads)
    idx = rec.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    key, offset = lines[37].split("\t")
    lines[37] = f"{key}\t{int(offset) + 4}"
    idx.write_text("\n".join(lines) + "\n")
    records = IndexedRecordIO(rec)  # the cheap checks pass
    assert records.read(36) == payloads[36]
    with pytest.raises(RecordIOError, match=rf"many\.rec, key 37, byte offset {int(offset) + 4}: "
                       r"no RecordIO magic .*many\.idx disagrees"):
        records.read(37)


def test_corrupt_continuation_flag_is_reported(tmp_path):
    rec = tmp_path / "bad.rec"
    write_records(rec, {0: b"abcd" + MAGIC_BYTES + b"efgh"})
    good = rec.read_bytes()
    starts_in_the_middle = bytearray(good)
    starts_in_the_middle[7] = 2 << 5  # first part: flag 2 (middle) where 0 or 1 must start
    rec.write_bytes(bytes(starts_in_the_middle))
    with pytest.raises(RecordIOError, match=r"bad\.rec, key 0, byte offset 0: continuation "
                       "flag 2 where 0 or 1 is expected"):
        IndexedRecordIO(rec)
    never_ends = bytearray(good)
    never_ends[12 + 7] = 2 << 5  # second part: flag 2 (middle) where 3 (end) would close it
    rec.write_bytes(bytes(never_ends))
    with pytest.raises(RecordIOError, match="byte offset 24: record part header cut short by "
                       "the end of the file"):
        IndexedRecordIO(rec)
