"""Tests for face alignment: the similarity transform (data_pipelines.similarity), YuNet detection
and the decision for 0 or several faces (data_pipelines.align), the aligned source
(data_pipelines.sources.aligned) and the command (cure_jax.align).

The transform tests need nothing but NumPy. Detection tests need OpenCV (the `align` extra), the
YuNet model (`$CURE_JAX_MODELS` or `<repo>/../shared/models`) and LFW (`$CURE_JAX_LFW` or
`<repo>/../shared/data/lfw`); they skip, saying which is missing, when one is absent.
"""

import json
import os
import pathlib
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from cure_jax import align as align_cli
from data_pipelines.align import (
    Detections,
    Outcome,
    YuNetDetector,
    align_image,
    choose_faces,
    default_model_path,
    import_cv2,
    warp_face,
)
from data_pipelines.similarity import (
    ARCFACE_112,
    alignment_matrix,
    apply_affine,
    arcface_template,
    decompose_similarity,
    estimate_similarity,
)
from data_pipelines.sources.aligned import AlignedSource, AlignmentError

REPO = pathlib.Path(__file__).resolve().parents[1]
# Four people, one image each: frontal, different sexes and skin tones.
LFW_FACES = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg",
             "Colin_Powell/Colin_Powell_0001.jpg", "Gloria_Macapagal_Arroyo/"
             "Gloria_Macapagal_Arroyo_0001.jpg")


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.concatenate([scale * rotation, np.asarray(shift, float)[:, None]], axis=1)


def least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Reference: a similarity is linear in (a, b, tx, ty), M = [[a, -b, tx], [b, a, ty]], so the
    least-squares one is a plain linear solve (no SVD, no reflection possible: det = a^2 + b^2)."""
    rows_x = np.stack([src[:, 0], -src[:, 1], np.ones(len(src)), np.zeros(len(src))], axis=1)
    rows_y = np.stack([src[:, 1], src[:, 0], np.zeros(len(src)), np.ones(len(src))], axis=1)
    a, b, tx, ty = np.linalg.lstsq(np.concatenate([rows_x, rows_y]),
                                   np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


# ------------------------------------------------------------------------------------------
# The transform, on synthetic points.


def test_template_sizes_follow_insightface():
    np.testing.assert_allclose(arcface_template(112)[0], [38.2946, 51.6963])
    np.testing.assert_allclose(arcface_template(224), 2 * ARCFACE_112)
    np.testing.assert_allclose(arcface_template(128), ARCFACE_112 + [8.0, 0.0])
    np.testing.assert_allclose(arcface_template(256), 2 * (ARCFACE_112 + [8.0, 0.0]))
    np.testing.assert_allclose(arcface_template(64), ARCFACE_112 * 64 / 112)
    for bad in (0, -112, 112.0, True, "112"):
        with pytest.raises(ValueError, match="size must be a positive int"):
            arcface_template(bad)


@pytest.mark.parametrize("scale, degrees, shift", [
    (1.0, 0.0, (0.0, 0.0)), (0.37, 12.0, (-40.0, 7.5)), (3.1, -75.0, (300.0, -20.0)),
    (0.05, 179.0, (1.0, 2.0)), (12.0, -135.0, (-1000.0, 2500.0))])
def test_exact_similarity_is_recovered_and_maps_points_exactly(scale, degrees, shift):
    # Photo landmarks that are an exact similarity of the template: the estimate inverts it.
    to_photo = similarity(scale, degrees, shift)
    photo = apply_affine(to_photo, ARCFACE_112)
    matrix = estimate_similarity(photo, ARCFACE_112)
    np.testing.assert_allclose(apply_affine(matrix, photo), ARCFACE_112, atol=1e-9)
    back = decompose_similarity(matrix)
    assert back["scale"] == pytest.approx(1.0 / scale, rel=1e-9)
    assert back["rotation_deg"] == pytest.approx(-degrees, abs=1e-9)
    forward = decompose_similarity(estimate_similarity(ARCFACE_112, photo))
    np.testing.assert_allclose(
        [forward["scale"], forward["rotation_deg"], forward["shift_x"], forward["shift_y"]],
        [scale, degrees, *shift], rtol=1e-9, atol=1e-9)


def test_noisy_points_give_the_least_squares_similarity():
    rng = np.random.default_rng(0)
    for trial in range(20):
        to_photo = similarity(rng.uniform(0.2, 5.0), rng.uniform(-180, 180),
                              rng.uniform(-200, 200, size=2))
        points = rng.integers(3, 9)  # the solution holds for any number of points
        template = rng.uniform(0, 112, size=(points, 2))
        photo = apply_affine(to_photo, template) + rng.normal(0, 4.0, size=(points, 2))
        matrix = estimate_similarity(photo, template)
        np.testing.assert_allclose(matrix, least_squares_similarity(photo, template),
                                   atol=1e-8, err_msg=f"trial {trial}")
        # And it is not an exact fit: the noise leaves a residual the optimum cannot remove.
        assert np.abs(apply_affine(matrix, photo) - template).max() > 1e-3


def test_mirrored_points_give_a_rotation_not_a_reflection():
    mirrored = ARCFACE_112 * [-1.0, 1.0]  # left and right swapped: only a reflection fits
    matrix = estimate_similarity(mirrored, ARCFACE_112)
    assert np.linalg.det(matrix[:, :2]) > 0
    np.testing.assert_allclose(matrix, least_squares_similarity(mirrored, ARCFACE_112), atol=1e-8)


def test_bad_points_raise_with_the_reason():
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.full((5, 2), 7.0), ARCFACE_112)
    with pytest.raises(ValueError, match="same shape"):
        estimate_similarity(ARCFACE_112[:4], ARCFACE_112)
    with pytest.raises(ValueError, match="non-finite"):
        estimate_similarity(np.where(np.eye(5, 2) > 0, np.nan, ARCFACE_112), ARCFACE_112)
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        alignment_matrix(ARCFACE_112[:4])


def test_alignment_matrix_targets_the_template_of_the_size():
    photo = apply_affine(similarity(2.0, 30.0, (50.0, 60.0)), ARCFACE_112)
    np.testing.assert_allclose(apply_affine(alignment_matrix(photo, size=224), photo),
                               arcface_template(224), atol=1e-9)


# ------------------------------------------------------------------------------------------
# The decision for 0 or several faces, and errors when OpenCV or the model is missing.


def detections(boxes, scores) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    landmarks = np.zeros((len(boxes), 5, 2), np.float32) + boxes[:, None, :2]
    return Detections(boxes, landmarks, np.asarray(scores, np.float32))


def test_choose_faces_is_explicit_for_zero_one_and_several():
    none = detections([], [])
    one = detections([[0, 0, 50, 50]], [0.9])
    # Sorted by score as the detector returns them; the second is the largest.
    several = detections([[0, 0, 40, 40], [100, 0, 60, 70], [200, 0, 60, 70]], [0.95, 0.9, 0.85])
    assert choose_faces(none, multiple="largest")[0] is Outcome.NO_FACE
    assert choose_faces(one, multiple="skip")[0] is Outcome.ALIGNED
    outcome, chosen = choose_faces(several, multiple="skip")
    assert outcome is Outcome.SEVERAL_FACES and chosen.size == 0
    outcome, chosen = choose_faces(several, multiple="largest")
    assert outcome is Outcome.LARGEST_OF_SEVERAL and chosen.tolist() == [1]  # tie: higher score
    outcome, chosen = choose_faces(several, multiple="all")
    assert outcome is Outcome.ALL_OF_SEVERAL and chosen.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="multiple must be one of"):
        choose_faces(one, multiple="first")


def test_missing_opencv_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(ImportError, match=r"cure_jax\[align\]"):
        import_cv2()


def test_missing_model_names_the_path_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CURE_JAX_MODELS", str(tmp_path))
    assert default_model_path() == tmp_path / "yunet" / "face_detection_yunet_2023mar_int8bq.onnx"
    with pytest.raises(FileNotFoundError, match="CURE_JAX_MODELS"):
        YuNetDetector()


def test_detector_settings_are_checked(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    for bad in ({"score_threshold": 1.5}, {"nms_threshold": -0.1}, {"min_face_size": -1},
                {"max_side": 16}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            YuNetDetector(model, **bad)


# ------------------------------------------------------------------------------------------
# The warp and detection: OpenCV, the model and LFW.


@pytest.fixture(scope="module")
def cv2():
    return pytest.importorskip("cv2", reason="OpenCV is not installed (the `align` extra)")


@pytest.fixture(scope="module")
def detector(cv2):
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"YuNet model not found at {path} (set CURE_JAX_MODELS to its folder)")
    return YuNetDetector().load()


@pytest.fixture(scope="module")
def lfw_images() -> dict[str, np.ndarray]:
    root = pathlib.Path(os.environ.get("CURE_JAX_LFW", REPO.parent / "shared" / "data" / "lfw"))
    paths = [root / "images" / name for name in LFW_FACES]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"LFW images not found under {root} (set CURE_JAX_LFW to its folder)")
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in paths}


def montage(images: dict[str, np.ndarray]) -> np.ndarray:
    """Two different people side by side: uint8 [128, 256, 3]."""
    first, second = list(images.values())[:2]
    return np.concatenate([first, second], axis=1)


def test_warp_puts_the_landmarks_on_the_template(cv2):
    # A photo whose pixels hold their own coordinates (R = x, G = y): every pixel of the crop must
    # hold the photo coordinates that the inverse transform sends it to, the landmarks included.
    ys, xs = np.mgrid[0:256, 0:256]
    photo = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    landmarks = apply_affine(similarity(1.6, 20.0, (40.0, 30.0)), ARCFACE_112)
    face = warp_face(photo, landmarks, size=112)
    assert face.shape == (112, 112, 3) and face.dtype == np.uint8
    vs, us = np.mgrid[0:112, 0:112]
    source = apply_affine(similarity(1.6, 20.0, (40.0, 30.0)),
                          np.stack([us.ravel(), vs.ravel()], axis=1)).reshape(112, 112, 2)
    inside = np.all((source >= 0) & (source <= 255), axis=-1)
    assert inside.mean() > 0.9
    # Bilinear interpolation of a linear ramp is exact up to OpenCV's 1/32-pixel weights.
    np.testing.assert_allclose(face[..., :2][inside], source[inside], atol=1.0)
    # Black outside the photo, as insightface (a pixel's width away, past the interpolation).
    far_outside = np.any((source < -1) | (source > 256), axis=-1)
    assert far_outside.any() and np.all(face[far_outside] == 0)


def test_lfw_faces_are_found_once_with_landmarks_in_template_order(detector, lfw_images):
    for name, image in lfw_images.items():
        result = align_image(image, detector)
        assert result.outcome is Outcome.ALIGNED, name
        assert result.faces.shape == (1, 112, 112, 3) and result.faces.dtype == np.uint8
        eye_l, eye_r, nose, mouth_l, mouth_r = result.landmarks[0]
        assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0], name
        assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1]), name
        # A frontal face is nearly a similarity of the template: these four leave at most 6.7
        # pixels (of 112); misordered points (left and right, or eyes and mouth, swapped) 27.
        matrix = alignment_matrix(result.landmarks[0])
        residual = np.linalg.norm(apply_affine(matrix, result.landmarks[0]) - ARCFACE_112, axis=1)
        assert residual.max() < 12.0, (name, residual)


def paste(image: np.ndarray, cv2, *, zoom: float, canvas: tuple[int, int],
          at: tuple[int, int]) -> np.ndarray:
    """`image` scaled by `zoom` on a grey canvas (width, height) with its corner at (left, top)."""
    side = round(image.shape[0] * zoom)
    out = np.full((canvas[1], canvas[0], 3), 128, np.uint8)
    out[at[1]:at[1] + side, at[0]:at[0] + side] = cv2.resize(image, (side, side))
    return out


def test_detection_works_at_any_photo_size(detector, lfw_images, cv2):
    image = next(iter(lfw_images.values()))
    # Reference: the face at its own size with a margin (landmarks depend on the margin).
    reference = detector.detect(paste(image, cv2, zoom=1.0, canvas=(200, 200), at=(36, 36)))
    reference_points = reference.landmarks[0] - [36, 36]
    # Odd, non-square canvases; 2000 pixels is above max_side, so that photo is searched
    # reduced and its points scaled back.
    for zoom, canvas, at in ((1.5, (301, 203), (17, 9)), (2.0, (270, 480), (5, 200)),
                             (3.0, (2000, 1100), (1500, 600))):
        found = detector.detect(paste(image, cv2, zoom=zoom, canvas=canvas, at=at))
        assert len(found) == 1, canvas
        # Relative to the face's side: the int8 model's landmarks move by up to 5% from one
        # scale to another on this face; a wrong scale-back would be off by over 50%.
        error = np.abs((found.landmarks[0] - at) / zoom - reference_points).max() / 128
        assert error < 0.08, (canvas, error)


def test_warp_matches_opencv_sface_align_crop(detector, lfw_images, cv2):
    # OpenCV's own YuNet-to-SFace alignment (FaceRecognizerSF.alignCrop) implements the same
    # template and least-squares similarity independently: the crops agree to rounding.
    path = default_model_path().parents[1] / "sface" / "face_recognition_sface_2021dec_int8bq.onnx"
    if not path.is_file():
        pytest.skip(f"SFace model not found at {path} (set CURE_JAX_MODELS to its folder)")
    recognizer = cv2.FaceRecognizerSF.create(str(path), "")
    for name, image in lfw_images.items():
        found = detector.detect(image)
        row = np.concatenate([found.boxes[0], found.landmarks[0].ravel(), found.scores[:1]])
        theirs = recognizer.alignCrop(np.ascontiguousarray(image[..., ::-1]), row[None])
        ours = warp_face(image, found.landmarks[0])[..., ::-1]
        difference = np.abs(theirs.astype(int) - ours)
        assert difference.max() <= 1 and difference.mean() < 0.01, name


def test_blank_images_have_no_face(detector):
    for value in (0, 128, 255):
        result = align_image(np.full((240, 320, 3), value, np.uint8), detector)
        assert result.outcome is Outcome.NO_FACE
        assert result.faces.shape == (0, 112, 112, 3) and len(result.detections) == 0


def test_two_people_side_by_side_are_several_faces(detector, lfw_images):
    image = montage(lfw_images)
    skipped = align_image(image, detector, multiple="skip")
    assert skipped.outcome is Outcome.SEVERAL_FACES and len(skipped.faces) == 0
    assert len(skipped.detections) == 2
    # One face in each half.
    assert sorted(skipped.detections.boxes[:, 0] + skipped.detections.boxes[:, 2] / 2 > 128) == [
        False, True]
    largest = align_image(image, detector, multiple="largest")
    areas = largest.detections.boxes[:, 2] * largest.detections.boxes[:, 3]
    assert largest.outcome is Outcome.LARGEST_OF_SEVERAL
    assert largest.chosen.tolist() == [np.argmax(areas)]
    np.testing.assert_array_equal(largest.landmarks[0],
                                  largest.detections.landmarks[np.argmax(areas)])
    assert align_image(image, detector, multiple="all").faces.shape == (2, 112, 112, 3)


def test_thresholds_are_applied(detector, lfw_images):
    image = montage(lfw_images)
    strict = YuNetDetector(detector.model_path, score_threshold=0.99)
    assert align_image(image, strict).outcome is Outcome.NO_FACE
    large_only = YuNetDetector(detector.model_path, min_face_size=200)
    assert align_image(image, large_only).outcome is Outcome.NO_FACE


# ------------------------------------------------------------------------------------------
# The aligned source.


class ListSource:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "label": np.int32(10 + index), "path": f"p{index}"}


@pytest.fixture
def photos(lfw_images) -> ListSource:
    faces = list(lfw_images.values())
    return ListSource([faces[0], np.zeros((90, 90, 3), np.uint8), montage(lfw_images), faces[1]])


def test_aligned_source_drops_and_lists_photos_without_one_face(detector, photos):
    source = AlignedSource(photos, detector=detector, multiple="skip", on_failure="drop",
                           progress=False)
    assert len(source) == 2 and source.indices.tolist() == [0, 3]
    assert source.failures == {1: Outcome.NO_FACE, 2: Outcome.SEVERAL_FACES}
    record = source[1]
    assert record["label"] == 13 and record["path"] == "p3"
    assert record["image"].shape == (112, 112, 3) and record["landmarks"].shape == (5, 2)
    direct = align_image(photos[3]["image"], detector)
    np.testing.assert_array_equal(record["image"], direct.faces[0])
    with pytest.raises(IndexError):
        source[2]


def test_aligned_source_in_error_mode_raises_on_the_failing_record(detector, photos):
    source = AlignedSource(photos, detector=detector, multiple="largest")
    assert len(source) == 4
    assert source[2]["image"].shape == (112, 112, 3)  # largest of the two
    with pytest.raises(AlignmentError, match="no_face") as info:
        source[1]
    assert info.value.index == 1 and info.value.outcome is Outcome.NO_FACE
    assert info.value.path == "p1"
    # grain workers receive the source pickled: the OpenCV network is rebuilt there.
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[0]["image"], source[0]["image"])


def test_aligned_source_resizes_photos_without_a_face_and_counts_outcomes(detector, photos):
    source = AlignedSource(photos, detector=detector, multiple="largest", on_failure="resize",
                           progress=False)
    assert len(source) == 4 and source.indices.tolist() == [0, 1, 2, 3]
    assert source.failures == {1: Outcome.NO_FACE}
    assert source.outcomes == {Outcome.ALIGNED: 2, Outcome.NO_FACE: 1,
                               Outcome.LARGEST_OF_SEVERAL: 1}
    blank = source[1]
    assert blank["image"].shape == (112, 112, 3) and np.all(blank["image"] == 0)
    assert np.all(np.isnan(blank["landmarks"]))
    np.testing.assert_array_equal(source[0]["image"],
                                  align_image(photos[0]["image"], detector).faces[0])


def test_face_data_aligns_training_and_pair_photos_when_decoded(detector, lfw_images, tmp_path):
    from cure_jax.config import DataConfig
    from data_pipelines.datasets import load_face_data

    faces = list(lfw_images.values())
    root = tmp_path / "lfw"
    files = {"Ann": [faces[0], faces[2]], "Ben": [faces[1], np.zeros((128, 128, 3), np.uint8)]}
    for name, images in files.items():
        (root / "images" / name).mkdir(parents=True)
        for k, image in enumerate(images, start=1):
            Image.fromarray(image).save(root / "images" / name / f"{name}_{k:04d}.jpg")
    (root / "pairs.txt").write_text("1 1\nAnn 1 2\nAnn 1 Ben 2\n")
    data = load_face_data(DataConfig(source="folder", root=str(root / "images"),
                                     pairs=str(root / "pairs.txt"), image_size=112,
                                     align="yunet", holdout_per_identity=0.0), progress=False)
    # Training: the blank photo is left out; pairs: it stays, resized, so both pairs count.
    assert len(data.records) == 3 and data.records.images.shape[1:] == (112, 112, 3)
    decoded = np.asarray(Image.open(root / "images" / "Ann" / "Ann_0001.jpg").convert("RGB"))
    np.testing.assert_array_equal(data.records.images[0], align_image(decoded, detector).faces[0])
    assert len(data.verification.source) == 3 and len(data.verification.issame) == 2
    blank = str(root / "images" / "Ben" / "Ben_0002.jpg")
    assert data.alignment["train"]["without_face_files"] == [blank]
    assert data.alignment["train"]["without_face"] == "left out"
    assert data.alignment["verification"]["without_face_files"] == [blank]
    assert data.alignment["verification"]["outcomes"] == {"aligned": 2, "no_face": 1}


def test_aligned_source_rejects_bad_choices(detector, photos):
    with pytest.raises(ValueError, match="one face per record"):
        AlignedSource(photos, detector=detector, multiple="all")
    with pytest.raises(ValueError, match="on_failure"):
        AlignedSource(photos, detector=detector, on_failure="ignore")


# ------------------------------------------------------------------------------------------
# The command.


def test_output_names_keep_extensions_apart_only_when_stems_collide():
    files = [pathlib.Path(n) for n in ("a.jpg", "a.png", "b.jpeg")]
    assert align_cli._output_names(files, "png") == ["a_jpg.png", "a_png.png", "b.png"]


def test_photos_are_read_upright_by_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the viewer rotates it 90 degrees clockwise
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "p.jpg", exif=exif)
    assert align_cli.read_photo(tmp_path / "p.jpg").shape == (40, 20, 3)


def test_layout_errors_are_explained(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"x")
    with pytest.raises(SystemExit, match="--identity"):
        align_cli.plan_photos(flat, identity=None, fmt="png")
    (flat / "Bob").mkdir()
    with pytest.raises(SystemExit, match="mixes 1 files"):
        align_cli.plan_photos(flat, identity="x", fmt="png")
    with pytest.raises(SystemExit, match="outside"):
        align_cli.prepare_output(flat / "out", flat)


@pytest.fixture
def photo_folders(tmp_path, lfw_images) -> pathlib.Path:
    """Two identity folders: Ann (two faces) and Ben (a face, a blank, two people, a text)."""
    faces = list(lfw_images.values())
    root = tmp_path / "by_identity"
    for name, files in {
        "Ann": {"a1.jpg": faces[0], "a2.png": faces[2]},
        "Ben": {"b1.jpg": faces[1], "blank.png": np.zeros((64, 64, 3), np.uint8),
                "pair.jpg": montage(lfw_images)},
    }.items():
        (root / name).mkdir(parents=True)
        for file, image in files.items():
            Image.fromarray(image).save(root / name / file)
    (root / "Ben" / "notes.txt").write_text("not a photo")
    return root


def read_report(output: pathlib.Path) -> dict:
    return json.loads((output / "alignment.json").read_text())


def test_command_aligns_a_folder_per_identity_and_reports_every_file(detector, photo_folders,
                                                                     tmp_path, capsys):
    out = tmp_path / "aligned"
    assert align_cli.main(["--input", str(photo_folders), "--output", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "Ann/a1.png", "Ann/a2.png", "Ben/b1.png", "alignment.json"]
    assert Image.open(out / "Ann" / "a1.png").size == (112, 112)
    report = read_report(out)
    outcomes = {pathlib.Path(e["input"]).name: e["outcome"] for e in report["files"]}
    assert outcomes == {"a1.jpg": "aligned", "a2.png": "aligned", "b1.jpg": "aligned",
                        "blank.png": "no_face", "pair.jpg": "several_faces",
                        "notes.txt": "unreadable"}
    assert report["summary"]["outcomes"] == {"aligned": 3, "largest_of_several": 0,
                                             "several_faces": 1, "no_face": 1, "unreadable": 1}
    printed = capsys.readouterr().out
    assert "6 files, 3 aligned faces" in printed
    assert "several_faces        1" in printed and "no_face              1" in printed
    # A second run into the same folder is refused and leaves the first run's output alone.
    with pytest.raises(SystemExit, match="not empty"):
        align_cli.main(["--input", str(photo_folders), "--output", str(out), "--multiple",
                        "largest"])
    assert read_report(out) == report


def test_command_aligns_a_flat_folder_under_the_given_identity(detector, photo_folders,
                                                               tmp_path):
    out = tmp_path / "aligned"
    code = align_cli.main(["--input", str(photo_folders / "Ben"), "--output", str(out),
                           "--identity", "Ben_Smith", "--multiple", "largest", "--format", "jpg",
                           "--size", "128"])
    assert code == 0
    assert sorted(p.name for p in (out / "Ben_Smith").iterdir()) == ["b1.jpg", "pair.jpg"]
    assert Image.open(out / "Ben_Smith" / "pair.jpg").size == (128, 128)
    report = read_report(out)
    assert report["summary"]["outcomes"]["largest_of_several"] == 1
    pair = next(e for e in report["files"] if e["input"].endswith("pair.jpg"))
    areas = [w * h for _, _, w, h in pair["boxes"]]
    assert pair["faces_detected"] == 2 and pair["aligned_face"] == int(np.argmax(areas))
    assert report["settings"]["size"] == 128 and report["settings"]["multiple"] == "largest"
