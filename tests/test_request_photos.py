"""The photos of a forget request: listing, hashing, preparing, refusing, and making requests."""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from cure_jax import config as config_lib
from cure_jax.request_photos import (
    PhotoError,
    load_request_photos,
    photo_digests,
    request_key,
    write_holdout_photos,
    write_unseen_photos,
)
from data_pipelines.align import default_model_path
from data_pipelines.datasets import load_face_data
from data_pipelines.sources.image_folder import decode_image

REPO = pathlib.Path(__file__).resolve().parents[1]


def _save(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(folder / name)
    return folder / name


@pytest.fixture(scope="module")
def smoke_data():
    return load_face_data(config_lib.load_config("smoke").data, progress=False)


def test_the_request_key_ignores_names_and_order(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    _save(tmp_path / "one", "x.png", a), _save(tmp_path / "one", "y.png", b)
    _save(tmp_path / "two", "b.png", a), _save(tmp_path / "two", "a.png", b)
    names, digests = photo_digests(tmp_path / "one")
    assert names == ["x.png", "y.png"]
    assert request_key(digests) == request_key(photo_digests(tmp_path / "two")[1])
    _save(tmp_path / "two", "c.png", a[::-1])
    assert request_key(digests) != request_key(photo_digests(tmp_path / "two")[1])


@pytest.mark.parametrize("layout", ["missing", "empty", "nested"])
def test_a_folder_that_is_not_a_request_is_refused(tmp_path, layout):
    folder = tmp_path / "photos"
    if layout != "missing":
        folder.mkdir()
    if layout == "nested":
        (folder / "person").mkdir()
    with pytest.raises(PhotoError, match=str(folder.name)):
        photo_digests(folder)


def test_aligned_photos_are_prepared_like_training_images(tmp_path):
    rng = np.random.default_rng(1)
    path = _save(tmp_path, "face.png", rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    photos = load_request_photos(tmp_path, image_size=32, crop_box=(2, 4, 38, 40),
                                 aligned=True)
    expected = decode_image(str(path), crop_box=(2, 4, 38, 40), image_size=32)
    np.testing.assert_array_equal(photos.images[0], expected)
    assert photos.files == ["face.png"] and len(photos.sha256[0]) == 64


def test_an_unreadable_photo_is_named(tmp_path):
    _save(tmp_path, "good.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(PhotoError, match="notes.txt"):
        load_request_photos(tmp_path, image_size=8, aligned=True)


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("cv2", reason="OpenCV is not installed (the `align` extra)")
    if not default_model_path().is_file():
        pytest.skip(f"YuNet model not found at {default_model_path()} (set CURE_JAX_MODELS)")
    from data_pipelines.align import YuNetDetector

    return YuNetDetector().load()


@pytest.fixture(scope="module")
def lfw_faces():
    root = pathlib.Path(os.environ.get("CURE_JAX_LFW", REPO.parent / "shared" / "data" / "lfw"))
    paths = [root / "images" / "Aaron_Peirsol" / f"Aaron_Peirsol_000{i}.jpg" for i in (1, 2)]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"LFW images not found under {root} (set CURE_JAX_LFW to its folder)")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_detection_aligns_a_face_to_the_models_input(tmp_path, detector, lfw_faces):
    _save(tmp_path, "a.jpg", lfw_faces[0])
    photos = load_request_photos(tmp_path, image_size=64, detector=detector)
    assert photos.images.shape == (1, 64, 64, 3)


def test_a_photo_without_a_face_or_with_several_faces_is_refused(tmp_path, detector, lfw_faces):
    _save(tmp_path, "a.jpg", lfw_faces[0])
    _save(tmp_path, "blank.png", np.full((128, 128, 3), 127, np.uint8))
    _save(tmp_path, "two.png", np.concatenate(lfw_faces, axis=1))
    with pytest.raises(PhotoError) as error:
        load_request_photos(tmp_path, image_size=64, detector=detector)
    message = str(error.value)
    assert "2 of the 3 photos" in message
    assert "blank.png: no face found" in message
    assert "two.png: 2 faces found" in message


def test_holdout_photos_are_never_trained_images_of_the_identity(tmp_path, smoke_data):
    written = write_holdout_photos(smoke_data, "3", tmp_path / "req", count=2)
    assert len(written) == 2
    labels = smoke_data.records.labels
    holdout = smoke_data.holdout_indices[labels[smoke_data.holdout_indices] == 3]
    images = {smoke_data.records.images[i].tobytes() for i in holdout}
    train = {smoke_data.records.images[i].tobytes() for i in smoke_data.train_indices}
    for path in written:
        pixels = np.asarray(Image.open(path)).tobytes()
        assert pixels in images and pixels not in train
    with pytest.raises(ValueError, match="not empty"):
        write_holdout_photos(smoke_data, "3", tmp_path / "req", count=2)
    with pytest.raises(ValueError, match="held-out images"):
        write_holdout_photos(smoke_data, "3", tmp_path / "more", count=5)
    with pytest.raises(ValueError, match="no training identity"):
        write_holdout_photos(smoke_data, "99", tmp_path / "nobody", count=1)


def test_unseen_photos_are_nobody_in_the_training_set(tmp_path, smoke_data):
    config = config_lib.load_config("smoke").data
    written = write_unseen_photos(config, smoke_data, "1", tmp_path / "unseen", count=3)
    train = {image.tobytes() for image in smoke_data.records.images}
    assert len(written) == 3
    assert all(np.asarray(Image.open(p)).tobytes() not in train for p in written)
