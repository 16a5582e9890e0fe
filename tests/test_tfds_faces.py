"""Tests for data_pipelines.sources.tfds_faces: datasets prepared as array_record without
TensorFlow, read back through tfds.data_source as grain sources."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip(
    "tensorflow_datasets", reason='tensorflow-datasets is not installed (pip install ".[tfds]")')
pytest.importorskip("array_record", reason='array_record is not installed (pip install ".[tfds]")')

from data_pipelines.pipelines import train_dataset  # noqa: E402
from data_pipelines.sources.image_folder import ImageFolderSource  # noqa: E402
from data_pipelines.sources.recordio_faces import folder_to_recordio  # noqa: E402
from data_pipelines.sources.tfds_faces import (  # noqa: E402
    TfdsFaces,
    prepare_folder_dataset,
    prepare_recordio_dataset,
    select_identities,
)


def jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "faces"
    for name, count in (("Ann", 3), ("Bob", 1), ("Cy", 2)):
        (root / name).mkdir(parents=True)
        for n in range(1, count + 1):
            (root / name / f"{name}_{n:04d}.jpg").write_bytes(jpeg((50 * n, 30 * len(name), 9)))
    return root


def assert_same_records(faces, files) -> None:
    assert len(faces) == len(files) and faces.identity_names == files.identity_names
    np.testing.assert_array_equal(faces.labels, files.labels)
    for i in range(len(faces)):
        np.testing.assert_array_equal(faces[i]["image"], files[i]["image"])
        assert faces[i]["label"] == files[i]["label"] and faces[i]["label"].dtype == np.int32


def test_folder_dataset_reads_back_as_the_folder(folder, tmp_path):
    path = prepare_folder_dataset(folder, name="tiny_faces", data_dir=tmp_path / "tfds")
    assert path.endswith("tiny_faces/1.0.0")
    faces = TfdsFaces("tiny_faces", data_dir=tmp_path / "tfds", image_size=6)
    assert_same_records(faces, ImageFolderSource(folder, image_size=6))
    assert faces.identity_ranges.tolist() == [[0, 3], [3, 4], [4, 6]]
    source = tfds.data_source("tiny_faces", split="train", data_dir=str(tmp_path / "tfds"))
    assert source[1]["image"] == (folder / "Ann" / "Ann_0002.jpg").read_bytes()  # bytes as stored


def test_recordio_dataset_reads_back_as_the_folder(folder, tmp_path):
    folder_to_recordio(folder, tmp_path / "rec", progress=False)
    prepare_recordio_dataset(tmp_path / "rec", name="tiny_rec", data_dir=tmp_path / "tfds")
    faces = TfdsFaces("tiny_rec", data_dir=tmp_path / "tfds", min_images=2)
    assert_same_records(faces, ImageFolderSource(folder, min_images=2))


def test_filters_as_the_folder_source(folder, tmp_path):
    prepare_folder_dataset(folder, name="tiny_faces", data_dir=tmp_path / "tfds")
    faces = TfdsFaces("tiny_faces", data_dir=tmp_path / "tfds", max_images=2, max_identities=2)
    assert_same_records(faces, ImageFolderSource(folder, max_images=2, max_identities=2))


class OtherFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A dataset prepared elsewhere: Image feature, other key names, stored in shuffled order."""

    VERSION = tfds.core.Version("2.0.0")
    name = "other_faces"
    # TFDS looks for checksums beside a builder's package; a one-part module name has none.
    __module__ = "prepared_elsewhere"

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "face": tfds.features.Image(shape=(8, 10, 3), encoding_format="jpeg"),
            "person": tfds.features.ClassLabel(names=["p", "q", "r"]),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(9):
            yield i, {"face": io.BytesIO(jpeg((25 * i, 0, 0))), "person": i % 3}


def test_any_prepared_dataset_with_an_image_and_an_identity(tmp_path):
    OtherFaces(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    faces = TfdsFaces("other_faces", data_dir=tmp_path / "tfds")
    assert (faces.image_key, faces.label_key) == ("face", "person")
    assert faces.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert faces.identity_names == ["p", "q", "r"]
    raw = tfds.data_source("other_faces", split="train", data_dir=str(tmp_path / "tfds"))
    for i in range(len(faces)):
        stored = raw[int(faces.stored_index[i])]
        assert stored["person"] == faces.labels[i]
        np.testing.assert_array_equal(faces[i]["image"], stored["face"])  # same decoded pixels
    assert TfdsFaces("other_faces:2.0.0", data_dir=tmp_path / "tfds").num_classes == 3


class PixelFaces(OtherFaces, skip_registration=True):
    """Decoded uint8 pixels stored as a Tensor, features named image and label."""

    name = "pixel_faces"
    __module__ = "prepared_elsewhere"

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 10, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=2)}))

    def _generate_examples(self):
        for i in range(4):
            yield i, {"image": np.full((8, 10, 3), 40 * i, np.uint8), "label": i % 2}


def test_uint8_tensor_images_are_cropped_and_resized(tmp_path):
    PixelFaces(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    faces = TfdsFaces("pixel_faces", data_dir=tmp_path, crop_box=(1, 1, 9, 7), image_size=4)
    assert faces.labels.tolist() == [0, 0, 1, 1] and faces.identity_names == ["0", "1"]
    np.testing.assert_array_equal(faces[1]["image"], np.full((4, 4, 3), 80, np.uint8))
    with pytest.raises(ValueError, match="crop_box .* reaches outside an image of size 10x8"):
        TfdsFaces("pixel_faces", data_dir=tmp_path, crop_box=(0, 0, 11, 8))[0]


def test_grain_training_batches(folder, tmp_path):
    prepare_folder_dataset(folder, name="tiny_faces", data_dir=tmp_path / "tfds")
    batch = train_dataset(TfdsFaces("tiny_faces", data_dir=tmp_path / "tfds", image_size=8),
                          batch_size=4, seed=0)[0]
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32


def test_catalog_names_and_bad_names_are_refused(folder, tmp_path):
    with pytest.raises(ValueError, match="'mnist' belongs to the TFDS catalog"):
        prepare_folder_dataset(folder, name="mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match="must be snake_case"):
        prepare_folder_dataset(folder, name="My-Faces", data_dir=tmp_path)


def test_ambiguous_features_name_the_choices(tmp_path):
    class TwoImages(OtherFaces, skip_registration=True):
        name = "two_images"
        __module__ = "prepared_elsewhere"

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "a": tfds.features.Image(shape=(8, 10, 3), encoding_format="jpeg"),
                "b": tfds.features.Image(shape=(8, 10, 3), encoding_format="jpeg"),
                "person": tfds.features.ClassLabel(num_classes=3)}))

        def _generate_examples(self):
            for i in range(3):
                yield i, {"a": io.BytesIO(jpeg((9, 9, 9))), "b": io.BytesIO(jpeg((9, 9, 9))),
                          "person": i}

    TwoImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    with pytest.raises(KeyError, match=r"which feature is the image among \['a', 'b', 'person'\]"):
        TfdsFaces("two_images", data_dir=tmp_path)
    assert TfdsFaces("two_images", data_dir=tmp_path, image_key="b").num_classes == 3


def test_select_identities():
    order, kept = select_identities(np.array([2, 0, 2, 1, 2]), min_images=1, max_images=2)
    assert order.tolist() == [1, 3, 0, 2] and kept.tolist() == [0, 1, 2]
    order, kept = select_identities(np.array([2, 0, 2, 1, 2]), min_images=2)
    assert order.tolist() == [0, 2, 4] and kept.tolist() == [2]


def test_reading_does_not_import_tensorflow(folder, tmp_path):
    script = (
        "import sys\n"
        "from data_pipelines.sources.tfds_faces import TfdsFaces, prepare_folder_dataset\n"
        f"prepare_folder_dataset({str(folder)!r}, name='tiny_faces', data_dir={str(tmp_path)!r})\n"
        f"TfdsFaces('tiny_faces', data_dir={str(tmp_path)!r})[0]\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
