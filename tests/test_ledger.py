"""The ledger of forget requests and the digests it records."""

import json

import numpy as np
import pytest

from cure_jax import ledger


def _entry(number, key="k", status=ledger.SERVED, found=(1, 2)):
    return {"number": number, "status": status, "photos_key": key, "found": list(found)}


def test_write_read_round_trip_with_index_lists_on_one_line(tmp_path):
    entries = [_entry(1, "a", found=(3, 5, 8)), _entry(2, "b", found=())]
    ledger.write(tmp_path, entries)
    assert ledger.read(tmp_path) == entries
    text = (tmp_path / ledger.LEDGER_NAME).read_text()
    assert "[3, 5, 8]" in text
    assert not (tmp_path / "requests.json.partial").exists()


def test_no_ledger_reads_as_no_requests_and_a_foreign_file_is_refused(tmp_path):
    assert ledger.read(tmp_path) == []
    (tmp_path / ledger.LEDGER_NAME).write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="not a ledger"):
        ledger.read(tmp_path)
    ledger.write(tmp_path, [_entry(2)])
    with pytest.raises(ValueError, match="numbered"):
        ledger.read(tmp_path)


def test_upsert_appends_the_next_request_and_replaces_a_recorded_one(tmp_path):
    ledger.upsert(tmp_path, _entry(1, status=ledger.STARTED))
    ledger.upsert(tmp_path, _entry(1, status=ledger.SERVED))
    ledger.upsert(tmp_path, _entry(2, "b"))
    assert [e["status"] for e in ledger.read(tmp_path)] == [ledger.SERVED, ledger.SERVED]
    with pytest.raises(ValueError, match="cannot follow"):
        ledger.upsert(tmp_path, _entry(4))


def test_find_and_forgotten_rows():
    entries = [_entry(1, "a", found=(5, 1)), _entry(2, "b", found=(9, 5))]
    assert ledger.find(entries, "b")["number"] == 2
    assert ledger.find(entries, "c") is None
    assert ledger.forgotten_rows(entries, before=2) == [1, 5]
    assert ledger.forgotten_rows(entries, before=3) == [1, 5, 9]


def test_folder_digest_follows_names_and_contents(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.bin").write_bytes(b"123")
    first = ledger.folder_sha256(folder)
    assert ledger.folder_sha256(folder) == first
    (folder / "sub" / "a.bin").write_bytes(b"124")
    assert ledger.folder_sha256(folder) != first
    (folder / "sub" / "a.bin").write_bytes(b"123")
    (folder / "sub" / "a.bin").rename(folder / "sub" / "b.bin")
    assert ledger.folder_sha256(folder) != first


def test_weights_digest_follows_the_arrays_not_their_container():
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
    same = {"b": np.zeros(3, np.float32), "w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert ledger.weights_sha256(tree) == ledger.weights_sha256(same)
    changed = dict(tree, b=np.full(3, 1e-7, np.float32))
    assert ledger.weights_sha256(changed) != ledger.weights_sha256(tree)
    reshaped = dict(tree, w=tree["w"].reshape(3, 2))
    assert ledger.weights_sha256(reshaped) != ledger.weights_sha256(tree)
