"""Verification for a folder without pairs.txt: identities held out of training, balanced
distinct pairs in 10 folds, seeded, kept in the run folder in pairs.txt form and checked on a
rerun."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from configs.smoke import get_config
from cure_jax import stages, train
from cure_jax.config import ConfigError, apply_overrides
from data_pipelines.datasets import load_face_data
from data_pipelines.sources.image_folder import decode_image
from data_pipelines.sources.lfw_pairs import format_pairs, read_pairs
from data_pipelines.sources.verification_bin import write_bin
from data_pipelines.verification_pairs import (
    as_pairs,
    draw_pairs,
    holdout_identities,
    max_pairs_per_fold,
)

SMOKE = get_config()


def write_faces(root: pathlib.Path, counts: list[int], side: int = 20) -> pathlib.Path:
    """root/p<k>/img<n>.png, identity k with counts[k] random images (names not LFW's)."""
    rng = np.random.default_rng(0)
    for k, count in enumerate(counts):
        (root / f"p{k:02d}").mkdir(parents=True)
        for n in range(count):
            image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / f"p{k:02d}" / f"img{n:02d}.png")
    return root


@pytest.fixture
def faces(tmp_path):
    return write_faces(tmp_path / "faces", [4 + k % 3 for k in range(10)])


def folder_data(root, **fields):
    return dataclasses.replace(SMOKE.data, source="folder", root=str(root), **fields)


def test_held_out_people_do_not_train_and_verify_in_balanced_distinct_folds(faces):
    data = load_face_data(folder_data(faces, holdout_identities=0.2), progress=False)
    held_out = sorted({name for p in data.drawn_pairs for name in (p.name_a, p.name_b)})
    assert len(held_out) == 2 and not set(held_out) & set(data.identity_names)
    assert data.num_classes == 8 == len(data.identity_names)
    np.testing.assert_array_equal(np.unique(data.records.labels), np.arange(8))
    assert len(data.records) == sum(len(list((faces / n).iterdir())) for n in data.identity_names)
    v = data.verification
    labels = v.source.labels
    assert len(v.source) == sum(len(list((faces / n).iterdir())) for n in held_out)
    np.testing.assert_array_equal(labels[v.idx_a] == labels[v.idx_b], v.issame)
    assert np.all(v.idx_a < v.idx_b)
    assert len({(a, b) for a, b in zip(v.idx_a, v.idx_b, strict=True)}) == len(v.idx_a)
    per_fold = len(v.idx_a) // 20
    assert per_fold >= 1
    for fold in range(10):
        assert np.sum(v.issame[v.folds == fold]) == per_fold
        assert np.sum(~v.issame[v.folds == fold]) == per_fold


def test_the_draw_is_seeded(faces):
    first = load_face_data(folder_data(faces), progress=False).drawn_pairs
    again = load_face_data(folder_data(faces), progress=False).drawn_pairs
    other = load_face_data(folder_data(faces, seed=1), progress=False).drawn_pairs
    assert first == again and first != other


def test_pairs_name_files_by_their_place_in_the_identity_folder(faces, tmp_path):
    data = load_face_data(folder_data(faces, holdout_identities=0.3), progress=False)
    (tmp_path / "pairs.txt").write_text(format_pairs(data.drawn_pairs))
    assert read_pairs(tmp_path / "pairs.txt") == data.drawn_pairs
    v = data.verification
    for pair, a, b in zip(data.drawn_pairs, v.idx_a, v.idx_b, strict=True):
        for name, number, index in ((pair.name_a, pair.number_a, a),
                                    (pair.name_b, pair.number_b, b)):
            path = sorted((faces / name).iterdir())[number - 1]
            np.testing.assert_array_equal(decode_image(str(path), image_size=32),
                                          v.source.images[index])


def test_bins_or_zero_hold_nobody_out(faces, tmp_path):
    files = sorted((faces / "p00").iterdir())[:2]
    write_bin(tmp_path / "v.bin", [f.read_bytes() for f in files], [True])
    for fields in ({"holdout_identities": 0.0}, {"verification_bins": (str(tmp_path / "v.bin"),)}):
        data = load_face_data(folder_data(faces, **fields), progress=False)
        assert data.num_classes == 10 and not data.drawn_pairs and data.verification is None
    assert load_face_data(folder_data(faces), progress=False).num_classes == 8  # 10%, at least 2


def test_draw_limits_and_errors():
    labels = np.repeat(np.arange(3), [5, 2, 1])
    assert max_pairs_per_fold(labels) == (10 + 1) // 10
    with pytest.raises(ValueError, match="allow 1 to 1"):
        draw_pairs(labels, pairs_per_fold=2, seed=0)
    with pytest.raises(ValueError, match="at least 2 must be held out and 2 must train"):
        holdout_identities(np.repeat(np.arange(3), 2), fraction=0.1, seed=0)
    idx_a, idx_b, issame, folds = draw_pairs(labels, pairs_per_fold=1, seed=0)
    pairs = as_pairs(idx_a, idx_b, issame, folds, labels, ["a b", "c", "d"])
    assert [(p.fold, p.issame) for p in pairs] == [(f, s) for f in range(10) for s in (1, 0)]
    with pytest.raises(ValueError, match="'a b' cannot be written in a pairs file"):
        format_pairs(pairs)


def test_too_few_held_out_images_and_bad_shares_are_clear_errors(tmp_path):
    root = write_faces(tmp_path / "pairs_of_two", [2] * 6)
    with pytest.raises(ValueError, match=r"data.holdout_identities=0.1: the 2 identities held out "
                       r"of training \(4 images\) give fewer than 10 distinct same-person pairs"):
        load_face_data(folder_data(root), progress=False)
    for value in ("0.6", "-0.1"):
        with pytest.raises(ConfigError, match=f"data.holdout_identities={value}"):
            apply_overrides(SMOKE, [f"data.holdout_identities={value}"])


def run_args(faces, workdir, *extra):
    return ["--config", "smoke", "--workdir", str(workdir), "--set", "data.source=folder",
            "--set", f"data.root={faces}", "--set", "teacher.epochs=1", *extra]


def test_a_rerun_reads_the_kept_pairs_and_refuses_other_ones(faces, tmp_path, capsys):
    workdir = tmp_path / "run"
    config = apply_overrides(SMOKE, ["data.source=folder", f"data.root={faces}",
                                     "teacher.epochs=1"])
    start = stages.start(config, workdir, [])
    kept = workdir / stages.DRAWN_PAIRS_FILE
    assert read_pairs(kept) == start.data.drawn_pairs
    stages.start(config, workdir, [])  # the same pairs again: accepted
    before = (workdir / "config.json").read_text()
    lines = kept.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # two same pairs of fold 0 swapped
    kept.write_text("\n".join(lines) + "\n")
    assert train.main(run_args(faces, workdir, "--stage", "teacher")) == 1
    err = capsys.readouterr().err
    assert f"{kept} holds other verification pairs" in err and "pair 1:" in err
    assert (workdir / "config.json").read_text() == before
    assert not (workdir / "teacher").exists()


def test_a_folder_of_an_older_run_without_kept_pairs_is_refused(faces, tmp_path, capsys):
    workdir = tmp_path / "run"
    config = apply_overrides(SMOKE, ["data.source=folder", f"data.root={faces}",
                                     "teacher.epochs=1"])
    stages.write_folder_config(workdir, config)
    assert train.main(run_args(faces, workdir, "--stage", "teacher")) == 1
    assert "made before identities were held out" in capsys.readouterr().err


@pytest.mark.slow
def test_the_teacher_is_verified_on_the_drawn_pairs(faces, tmp_path):
    workdir = tmp_path / "run"
    assert train.main(run_args(faces, workdir, "--stage", "teacher")) == 0
    kept = read_pairs(workdir / stages.DRAWN_PAIRS_FILE)
    metrics = json.loads((workdir / "teacher" / "eval.json").read_text())
    assert metrics["verification_pairs"] == len(kept) >= 20
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0
    assert train.main(run_args(faces, workdir, "--stage", "teacher")) == 0  # reused, same pairs
