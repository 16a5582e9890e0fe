"""Tests for data_pipelines.sources.lfw_pairs, on synthetic files and (when present) on LFW."""

import os
import pathlib

import grain
import numpy as np
import pytest
from PIL import Image

from data_pipelines.sources.lfw_pairs import Pair, PairsSource, read_pairs


def lfw_root() -> pathlib.Path:
    """LFW as described in its README; `CURE_JAX_LFW` overrides `<repo>/../shared/data/lfw`."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    root = pathlib.Path(os.environ.get("CURE_JAX_LFW", repo.parent / "shared" / "data" / "lfw"))
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"LFW pairs.txt not found under {root} (set CURE_JAX_LFW to its folder)")
    return root


def write_pairs(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


# Two folds of one same and one different pair each; Ann has 3 images, Ben 2, Cy 1.
TWO_FOLDS = """2 1
Ann\t1\t2
Ann\t1\tBen\t2
Ben\t1\t2
Cy\t1\tAnn\t3
"""


def pixel(name: str, number: int) -> np.ndarray:
    """A constant image whose colour encodes (name, number), so records can be told apart."""
    colour = (10 * len(name) + number, 40 * number, 200 - 3 * len(name))
    return np.full((9, 9, 3), colour, dtype=np.uint8)


@pytest.fixture
def tiny_lfw(tmp_path):
    for name, count in (("Ann", 3), ("Ben", 2), ("Cy", 1), ("Unused", 1)):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for number in range(1, count + 1):
            Image.fromarray(pixel(name, number)).save(folder / f"{name}_{number:04d}.jpg")
    write_pairs(tmp_path / "pairs.txt", TWO_FOLDS)
    return tmp_path


def test_read_pairs_parses_folds_and_kinds(tmp_path):
    pairs = read_pairs(write_pairs(tmp_path / "p.txt", TWO_FOLDS))
    assert pairs == [
        Pair("Ann", 1, "Ann", 2, True, 0),
        Pair("Ann", 1, "Ben", 2, False, 0),
        Pair("Ben", 1, "Ben", 2, True, 1),
        Pair("Cy", 1, "Ann", 3, False, 1),
    ]
    assert [p.line for p in pairs] == [2, 3, 4, 5]


def test_read_pairs_single_fold_header_and_blank_lines(tmp_path):
    text = "2\nA 1 2\n\nB 3 4\nA 1 B 1\nC 2 D 5\n\n"
    pairs = read_pairs(write_pairs(tmp_path / "dev.txt", text))
    assert [p.fold for p in pairs] == [0, 0, 0, 0]
    assert [p.issame for p in pairs] == [True, True, False, False]
    assert pairs[1].line == 4  # line numbers count the blank line


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty pairs file"),
        ("10 three\nA 1 2\n", r":1: header must be 'folds n'"),
        ("1 2 3\nA 1 2\n", r":1: header must be"),
        ("0 1\n", "must be positive"),
        ("2 1\nA 1 2\nA 1 B 2\n", r"2 fold\(s\) x 2 x 1 = 4 pair lines, found 2"),
        ("1 1\nA 1 2\nA 1 B 2\nC 1 2\n", "= 2 pair lines, found 3"),
        ("1 1\nA 1\nA 1 B 2\n", r":2: expected 'name i j'.*got 2 fields"),
        ("1 1\nA 1 2\nA 1 B 2 C\n", r":3: expected 'name i j'.*got 5 fields"),
        ("1 1\nA 1 x\nA 1 B 2\n", r":2: image number must be a positive integer, got 'x'"),
        ("1 1\nA 0 2\nA 1 B 2\n", r":2: image number must be a positive integer, got '0'"),
        ("1 1\nA 1 2\nA 1 A 2\n", r":3: a different-person line names 'A' twice"),
        ("1 1\nA 1 2\nB 1 2\n", r"fold 0 \(lines 2-3\) holds 2 same-person pairs"),
    ],
)
def test_read_pairs_rejects_malformed_files(tmp_path, text, match):
    path = write_pairs(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError, match=match) as info:
        read_pairs(path)
    assert str(path) in str(info.value)


def test_pairs_source_indices_images_and_labels(tiny_lfw):
    source = PairsSource(tiny_lfw)
    # Unique images used: Ann 1, 2, 3; Ben 1, 2; Cy 1 (Unused is in no pair).
    assert len(source) == 6
    assert source.identity_names == ["Ann", "Ben", "Cy"] and source.num_classes == 3
    np.testing.assert_array_equal(source.labels, [0, 0, 0, 1, 1, 2])
    idx_a, idx_b, issame, fold = source.pair_indices
    np.testing.assert_array_equal(idx_a, [0, 0, 3, 5])
    np.testing.assert_array_equal(idx_b, [1, 4, 4, 2])
    np.testing.assert_array_equal(issame, [True, False, True, False])
    np.testing.assert_array_equal(fold, [0, 0, 1, 1])
    assert idx_a.dtype == np.int32 and fold.dtype == np.int32 and issame.dtype == bool
    for pair, a, b in zip(source.pairs, idx_a, idx_b, strict=True):
        for name, number, index in (
            (pair.name_a, pair.number_a, a),
            (pair.name_b, pair.number_b, b),
        ):
            record = source[index]
            assert record["path"].endswith(os.path.join(name, f"{name}_{number:04d}.jpg"))
            assert source.identity_names[record["label"]] == name
            # Constant colours survive JPEG up to rounding.
            diff = np.abs(record["image"].astype(int) - pixel(name, number))
            assert diff.max() <= 3
    assert isinstance(source, grain.sources.RandomAccessDataSource)


def test_pairs_source_crop_resize_and_other_pairs_file(tiny_lfw):
    other = write_pairs(tiny_lfw / "dev.txt", "1\nBen 1 2\nBen 2 Cy 1\n")
    source = PairsSource(tiny_lfw, other, crop_box=(1, 2, 7, 8), image_size=4)
    assert len(source) == 3 and source.identity_names == ["Ben", "Cy"]
    assert source[0]["image"].shape == (4, 4, 3)
    with pytest.raises(ValueError, match="four integers"):
        PairsSource(tiny_lfw, crop_box=(1, 2, 3))


def test_pairs_source_missing_image_names_line_and_path(tiny_lfw):
    (tiny_lfw / "images" / "Ann" / "Ann_0003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"pairs.txt:5: pair Cy 1 / Ann 3") as info:
        PairsSource(tiny_lfw)
    assert os.path.join("Ann", "Ann_0003.jpg") in str(info.value)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        PairsSource(tiny_lfw / "nowhere")


def test_real_pairs_file():
    pairs = read_pairs(lfw_root() / "pairs.txt")
    assert len(pairs) == 6000
    assert sum(p.issame for p in pairs) == 3000
    folds = np.array([p.fold for p in pairs])
    np.testing.assert_array_equal(folds, np.arange(6000) // 600)  # contiguous folds of 600
    issame = np.array([p.issame for p in pairs]).reshape(10, 600)
    assert issame[:, :300].all() and not issame[:, 300:].any()
    assert pairs[0] == Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4, True, 0)
    assert pairs[300] == Pair("Abdel_Madi_Shabneh", 1, "Dean_Barker", 1, False, 0)
    dev = read_pairs(lfw_root() / "pairsDevTrain.txt")
    assert len(dev) == 2200 and {p.fold for p in dev} == {0}


def test_real_pairs_source():
    root = lfw_root()
    if not (root / "images").is_dir():
        pytest.skip(f"LFW images not found under {root}")
    source = PairsSource(root, image_size=112)
    pairs = read_pairs(root / "pairs.txt")
    unique = {(p.name_a, p.number_a) for p in pairs} | {(p.name_b, p.number_b) for p in pairs}
    assert len(source) == len(unique)
    idx_a, idx_b, issame, fold = source.pair_indices
    assert idx_a.shape == (6000,) and issame.sum() == 3000
    assert np.all(source.labels[idx_a[issame]] == source.labels[idx_b[issame]])
    assert np.all(source.labels[idx_a[~issame]] != source.labels[idx_b[~issame]])
    record = source[int(idx_b[0])]
    assert record["path"].endswith("Abel_Pacheco_0004.jpg")
    assert record["image"].shape == (112, 112, 3) and record["image"].dtype == np.uint8
