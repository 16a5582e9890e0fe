"""Tests for data_pipelines.sources.recordio_faces: the insightface layout, the grain source, and
conversion between a folder per identity and train.rec (on LFW too, when present)."""

import io
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from data_pipelines.pipelines import train_dataset
from data_pipelines.sources.image_folder import ImageFolderSource
from data_pipelines.sources.recordio import (
    HEADER,
    MAGIC_BYTES,
    IndexedRecordIO,
    RecordIOError,
    RecordIOWriter,
    pack_payload,
    unpack_payload,
)
from data_pipelines.sources.recordio_faces import (
    RecordIOFaces,
    folder_to_recordio,
    recordio_to_folder,
    write_faces_rec,
)


def lfw_images() -> pathlib.Path:
    repo = pathlib.Path(__file__).resolve().parents[1]
    root = pathlib.Path(os.environ.get("CURE_JAX_LFW", repo.parent / "shared" / "data" / "lfw"))
    if not (root / "images").is_dir():
        pytest.skip(f"LFW images not found under {root} (set CURE_JAX_LFW to its folder)")
    return root / "images"


def jpeg(colour, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def with_magic_inside(data: bytes) -> bytes:
    """JPEG bytes with the RecordIO magic appended at a 4-aligned payload offset (decoders stop
    at the JPEG end marker, so the image is unchanged)."""
    pad = -(HEADER.size + len(data)) % 4
    return data + bytes(pad) + MAGIC_BYTES + b"tail"


@pytest.fixture
def folder(tmp_path):
    """Three identities (3, 1 and 2 images); one image holds the magic; one empty folder."""
    files = {"Ann": [jpeg((200, 0, 0)), with_magic_inside(jpeg((0, 200, 0))), jpeg((0, 0, 200))],
             "Bob": [jpeg((90, 90, 90))], "Cy": [jpeg((10, 60, 110)), jpeg((250, 250, 0))]}
    root = tmp_path / "faces"
    for name, images in files.items():
        (root / name).mkdir(parents=True)
        for number, data in enumerate(images, start=1):
            (root / name / f"{name}_{number:04d}.jpg").write_bytes(data)
    (root / "Empty").mkdir()
    return root


def tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_folder_to_recordio_writes_the_insightface_layout(folder, tmp_path):
    out = tmp_path / "rec"
    assert folder_to_recordio(folder, out, progress=False) == 6
    assert (out / "property").read_text() == "3,10,12"
    assert (out / "identities.txt").read_text() == "Ann\nBob\nCy\n"
    records = IndexedRecordIO(out / "train.rec")
    header, data = unpack_payload(records.read(0))
    assert (header.flag, header.labels.tolist(), data) == (2, [7.0, 10.0], b"")
    ranges = [unpack_payload(records.read(k))[0].labels.tolist() for k in (7, 8, 9)]
    assert ranges == [[1.0, 4.0], [4.0, 5.0], [5.0, 7.0]]
    header, data = unpack_payload(records.read(5))
    assert (header.flag, header.label, header.id) == (0, 2.0, 5)
    assert data == (folder / "Cy" / "Cy_0001.jpg").read_bytes()


@pytest.mark.filterwarnings("ignore:1 of 4 identity folders")  # the empty folder, by design
def test_source_matches_the_folder(folder, tmp_path):
    folder_to_recordio(folder, tmp_path / "rec", progress=False)
    faces = RecordIOFaces(tmp_path / "rec", image_size=8)
    files = ImageFolderSource(folder, image_size=8)
    assert len(faces) == len(files) == 6
    assert faces.identity_names == files.identity_names == ["Ann", "Bob", "Cy"]
    np.testing.assert_array_equal(faces.labels, files.labels)
    assert faces.identity_ranges.tolist() == [[0, 3], [3, 4], [4, 6]]
    assert faces.identity_key_ranges.tolist() == [[1, 4], [4, 5], [5, 7]]
    for i in range(len(faces)):
        record = faces[i]
        assert record["label"].dtype == np.int32 and record["image"].dtype == np.uint8
        np.testing.assert_array_equal(record["image"], files[i]["image"])
        assert record["label"] == files[i]["label"] and record["key"] == i + 1


def test_round_trip_is_bit_exact_including_a_split_record(folder, tmp_path):
    folder_to_recordio(folder, tmp_path / "rec", progress=False)
    records = IndexedRecordIO(tmp_path / "rec" / "train.rec")
    raw = (tmp_path / "rec" / "train.rec").read_bytes()
    lrec = int.from_bytes(raw[records.offset_of(2) + 4:records.offset_of(2) + 8], "little")
    assert lrec >> 29 == 1  # Ann_0002 holds the magic: its record starts a split
    assert recordio_to_folder(tmp_path / "rec", tmp_path / "back", progress=False) == 6
    assert tree(tmp_path / "back") == tree(folder)


def test_filters_relabel_from_zero(folder, tmp_path):
    folder_to_recordio(folder, tmp_path / "rec", progress=False)
    faces = RecordIOFaces(tmp_path / "rec" / "train.rec", min_images=2, max_images=1)
    assert faces.identity_names == ["Ann", "Cy"] and faces.class_ids.tolist() == [0, 2]
    assert faces.labels.tolist() == [0, 1] and faces.keys.tolist() == [1, 5]
    assert faces.identity_ranges.tolist() == [[0, 1], [1, 2]]
    assert RecordIOFaces(tmp_path / "rec", max_identities=1).identity_names == ["Ann"]


def test_without_identities_file_names_are_padded_class_indices(folder, tmp_path):
    folder_to_recordio(folder, tmp_path / "rec", progress=False)
    (tmp_path / "rec" / "identities.txt").unlink()
    assert RecordIOFaces(tmp_path / "rec").identity_names == ["0", "1", "2"]
    recordio_to_folder(tmp_path / "rec", tmp_path / "back", progress=False)
    assert sorted(os.listdir(tmp_path / "back")) == ["0", "1", "2"]
    assert (tmp_path / "back" / "2" / "2_0002.jpg").read_bytes() == (
        folder / "Cy" / "Cy_0002.jpg").read_bytes()


def test_grain_training_batches(folder, tmp_path):
    folder_to_recordio(folder, tmp_path / "rec", progress=False)
    batch = train_dataset(RecordIOFaces(tmp_path / "rec", image_size=8), batch_size=4,
                          seed=0)[0]
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32


def write_layout(path, images: dict[int, tuple[float, bytes]], ranges: list[list[int]],
                 skip: tuple[int, ...] = ()) -> None:
    """A hand-made insightface .rec: images {key: (label, data)}, then identity records."""
    id_start = max(images) + 1
    with RecordIOWriter(path) as writer:
        writer.write(0, pack_payload([id_start, id_start + len(ranges)]))
        for key, (label, data) in images.items():
            if key not in skip:
                writer.write(key, pack_payload(label, data))
        for c, bounds in enumerate(ranges):
            writer.write(id_start + c, pack_payload(bounds))


def test_key_missing_from_the_index_fails_when_opened(tmp_path):
    images = {1: (0.0, jpeg((1, 2, 3))), 2: (0.0, jpeg((4, 5, 6))), 3: (1.0, jpeg((7, 8, 9)))}
    write_layout(tmp_path / "train.rec", images, [[1, 3], [3, 4]], skip=(2,))
    with pytest.raises(RecordIOError, match=r"train\.idx, key 2: key 2 is missing"):
        RecordIOFaces(tmp_path)


def test_ranges_that_do_not_tile_the_images_fail_when_opened(tmp_path):
    images = {1: (0.0, jpeg((1, 2, 3))), 2: (1.0, jpeg((4, 5, 6)))}
    write_layout(tmp_path / "train.rec", images, [[1, 2], [1, 3]])
    with pytest.raises(RecordIOError, match="identity record of class 1 holds"):
        RecordIOFaces(tmp_path)


def test_a_stored_label_that_contradicts_its_identity_fails_on_read(tmp_path):
    images = {1: (0.0, jpeg((1, 2, 3))), 2: (0.0, jpeg((4, 5, 6)))}
    write_layout(tmp_path / "train.rec", images, [[1, 2], [2, 3]])
    faces = RecordIOFaces(tmp_path)
    faces[0]
    with pytest.raises(RecordIOError, match=r"key 2, byte offset \d+: image record stores label "
                       "0.0, but its identity record gives class 1"):
        faces[1]


def test_an_undecodable_image_names_its_key(tmp_path):
    write_layout(tmp_path / "train.rec", {1: (0.0, b"not a jpeg")}, [[1, 2]])
    with pytest.raises(RecordIOError, match=r"train\.rec, key 1, byte offset \d+: image does not "
                       "decode"):
        RecordIOFaces(tmp_path)[0]


def test_a_rec_without_the_header_record_is_refused(tmp_path):
    with RecordIOWriter(tmp_path / "train.rec") as writer:
        writer.write(0, pack_payload(0.0, jpeg((1, 2, 3))))
    with pytest.raises(RecordIOError, match="record 0 has flag 0; an insightface .rec has flag 2"):
        RecordIOFaces(tmp_path)


def test_property_disagreeing_with_the_rec_is_refused(folder, tmp_path):
    folder_to_recordio(folder, tmp_path / "rec", progress=False)
    (tmp_path / "rec" / "property").write_text("4,112,112")
    with pytest.raises(ValueError, match=r"property reads '4,112,112'.* 3 classes"):
        RecordIOFaces(tmp_path / "rec")


def copy_identities(src: pathlib.Path, dst: pathlib.Path, names: list[str]) -> pathlib.Path:
    for name in names:
        (dst / name).mkdir(parents=True)
        for path in sorted((src / name).iterdir()):
            (dst / name / path.name).write_bytes(path.read_bytes())
    return dst


def test_lfw_subset_round_trip(tmp_path):
    images = lfw_images()
    names = sorted(os.listdir(images))[::200]  # 29 identities spread over the alphabet
    subset = copy_identities(images, tmp_path / "subset", names)
    folder_to_recordio(subset, tmp_path / "rec", progress=False)
    recordio_to_folder(tmp_path / "rec", tmp_path / "back", progress=False)
    assert tree(tmp_path / "back") == tree(subset)
    faces, files = RecordIOFaces(tmp_path / "rec"), ImageFolderSource(subset)
    np.testing.assert_array_equal(faces.labels, files.labels)
    for i in (0, len(faces) // 2, len(faces) - 1):
        np.testing.assert_array_equal(faces[i]["image"], files[i]["image"])


@pytest.mark.slow
def test_whole_lfw_round_trip_is_bit_exact(tmp_path):
    images = lfw_images()
    assert folder_to_recordio(images, tmp_path / "rec", progress=False) == 13233
    recordio_to_folder(tmp_path / "rec", tmp_path / "back", progress=False)
    back = tree(tmp_path / "back")
    assert len(back) == 13233
    for relative, data in back.items():
        assert (images / relative).read_bytes() == data, relative
    faces, files = RecordIOFaces(tmp_path / "rec"), ImageFolderSource(images)
    np.testing.assert_array_equal(faces.labels, files.labels)
    assert faces.identity_names == files.identity_names


def test_write_faces_rec_checks_the_image_count(tmp_path):
    with pytest.raises(ValueError, match="1 images for the 2 that counts announce"):
        write_faces_rec(tmp_path, ["a"], [2], iter([jpeg((1, 1, 1))]), image_shape=(10, 12))
    with pytest.raises(ValueError, match="more images than the 1 that counts announce"):
        write_faces_rec(tmp_path, ["a"], [1], iter([jpeg((1, 1, 1))] * 2), image_shape=(10, 12))
