"""Tests of the synthetic face source: determinism, layout, identities, degradation, pairs."""

import grain
import numpy as np
import pytest

from data_pipelines.sources.synthetic import (
    SyntheticFaces,
    identity_params,
    make_verification_pairs,
    nuisance_params,
    render_face,
)


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _sharpness(image: np.ndarray) -> float:
    """Mean squared finite difference of the luminance: high for crisp edges."""
    y = _luma(image)
    return float(np.mean(np.diff(y, axis=0) ** 2) + np.mean(np.diff(y, axis=1) ** 2))


def test_record_layout_and_dtypes():
    src = SyntheticFaces(num_identities=3, images_per_identity=4, image_size=40, seed=1)
    assert len(src) == 12 and src.num_classes == 3
    rec = src[6]
    assert rec["image"].shape == (40, 40, 3) and rec["image"].dtype == np.uint8
    assert rec["label"].dtype == np.int32 and int(rec["label"]) == 1
    assert rec["identity"].dtype == np.int64 and int(rec["identity"]) == 1
    assert rec["degradation"].dtype == np.float32 and 0.0 <= rec["degradation"] <= 1.0
    assert rec["image"].std() > 10  # a picture, not a blank


def test_deterministic_random_access():
    src = SyntheticFaces(num_identities=4, images_per_identity=3, seed=7)
    forward = [src[i]["image"] for i in range(len(src))]
    other = SyntheticFaces(num_identities=4, images_per_identity=3, seed=7)
    for i in [11, 0, 5, 5, 3, 11]:  # any order, repeated
        np.testing.assert_array_equal(other[i]["image"], forward[i])
    np.testing.assert_array_equal(src[-1]["image"], forward[-1])
    # Every image of a person is a different picture.
    assert not np.array_equal(forward[0], forward[1])


def test_seed_changes_the_data():
    a = SyntheticFaces(num_identities=2, images_per_identity=2, seed=0)[0]["image"]
    b = SyntheticFaces(num_identities=2, images_per_identity=2, seed=1)[0]["image"]
    assert not np.array_equal(a, b)


def test_labels_property_matches_records():
    src = SyntheticFaces(num_identities=3, images_per_identity=2, image_size=32, seed=2)
    labels = src.labels
    assert labels.dtype == np.int32 and labels.shape == (6,)
    np.testing.assert_array_equal(labels, [int(src[i]["label"]) for i in range(len(src))])


def test_index_out_of_range():
    src = SyntheticFaces(num_identities=2, images_per_identity=2)
    with pytest.raises(IndexError):
        src[4]
    with pytest.raises(IndexError):
        src[-5]


def test_different_identities_differ_under_the_same_nuisance():
    nuisance = nuisance_params(0, 0, seed=0, degradation=0.0)
    images = [render_face(identity_params(i, seed=0), nuisance, size=64) for i in range(6)]
    same = render_face(identity_params(0, seed=0), nuisance, size=64)
    np.testing.assert_array_equal(same, images[0])
    for i in range(6):
        for j in range(i + 1, 6):
            diff = np.abs(images[i].astype(np.int16) - images[j]).mean()
            assert diff > 3.0, (i, j, diff)


def test_identity_geometry_varies():
    # Identity must live in geometry, not only in colour.
    keys = ["head_a", "head_b", "eye_dx", "eye_y", "nose_len", "mouth_w", "brow_angle"]
    values = np.array([[identity_params(i, seed=0)[k] for k in keys] for i in range(50)])
    spread = values.std(axis=0) / np.abs(values).mean(axis=0)
    assert np.all(spread > 0.05), dict(zip(keys, spread, strict=True))
    styles = {identity_params(i, seed=0)["hair_style"] for i in range(50)}
    assert len(styles) >= 4


def test_offsets_give_disjoint_people_and_shared_ids_agree():
    a = SyntheticFaces(num_identities=5, images_per_identity=2, identity_offset=0)
    b = SyntheticFaces(num_identities=5, images_per_identity=2, identity_offset=5)
    ids_a = {int(a[i]["identity"]) for i in range(len(a))}
    ids_b = {int(b[i]["identity"]) for i in range(len(b))}
    assert ids_a == set(range(5)) and ids_b == set(range(5, 10))
    assert identity_params(0, seed=0)["head_a"] != identity_params(5, seed=0)["head_a"]
    assert int(b[0]["label"]) == 0
    # The same global person renders the same wherever it sits in a source.
    c = SyntheticFaces(num_identities=8, images_per_identity=2, identity_offset=2)
    np.testing.assert_array_equal(c[2 * 3 + 1]["image"], b[1]["image"])


def test_degradation_distribution():
    d = np.array([nuisance_params(i % 10, i, seed=0)["degradation"] for i in range(1000)])
    assert d.min() >= 0.0 and d.max() <= 1.0
    assert np.median(d) < 0.3  # most images clean-ish
    assert 0.03 < np.mean(d > 0.5) < 0.12  # and a degraded tail (1/16 expected)


def test_heavy_degradation_lowers_quality():
    brightness, contrast, sharpness, distance = [], [], [], []
    for i in range(12):
        ident = identity_params(i, seed=3)
        clean = nuisance_params(i, 0, seed=3, degradation=0.0)
        heavy = nuisance_params(i, 0, seed=3, degradation=1.0)
        img0, img1 = render_face(ident, clean, size=64), render_face(ident, heavy, size=64)
        brightness.append(_luma(img1).mean() < _luma(img0).mean())
        contrast.append(_luma(img1).std() < _luma(img0).std())
        distance.append(np.abs(img1.astype(np.int16) - img0).mean())
        # Sharpness without pixel noise, which adds high frequencies of its own.
        quiet0 = render_face(ident, dict(clean, noise=0.0), size=64)
        quiet1 = render_face(ident, dict(heavy, noise=0.0, extra_noise=0.0, occlude=False), size=64)
        sharpness.append(_sharpness(quiet1) < 0.5 * _sharpness(quiet0))
    assert all(brightness) and all(contrast) and all(sharpness)
    assert np.mean(distance) > 20.0
    # The recorded level is the level rendered.
    assert nuisance_params(1, 2, seed=0, degradation=0.7)["degradation"] == 0.7


def test_degradation_override_keeps_the_picture():
    a = nuisance_params(4, 9, seed=0)
    b = nuisance_params(4, 9, seed=0, degradation=0.9)
    assert a["roll"] == b["roll"] and np.array_equal(a["bg"], b["bg"])
    with pytest.raises(ValueError, match="degradation"):
        nuisance_params(4, 9, seed=0, degradation=1.5)


@pytest.mark.parametrize("size", [32, 112])
def test_other_sizes(size):
    rec = SyntheticFaces(num_identities=1, images_per_identity=1, image_size=size)[0]
    assert rec["image"].shape == (size, size, 3)


def test_verification_pairs_balanced_and_valid():
    labels = SyntheticFaces(num_identities=7, images_per_identity=5).labels
    idx_a, idx_b, issame = make_verification_pairs(labels, 600, seed=0)
    assert idx_a.shape == idx_b.shape == issame.shape == (600,)
    assert issame.dtype == bool and issame.sum() == 300
    assert np.all(idx_a != idx_b)
    assert np.all((0 <= idx_a) & (idx_a < len(labels)) & (0 <= idx_b) & (idx_b < len(labels)))
    np.testing.assert_array_equal(labels[idx_a] == labels[idx_b], issame)
    # Shuffled: every tenth of the list (a verification fold) holds both kinds.
    assert all(0 < f.sum() < len(f) for f in np.array_split(issame, 10))
    again = make_verification_pairs(labels, 600, seed=0)
    for x, y in zip((idx_a, idx_b, issame), again, strict=True):
        np.testing.assert_array_equal(x, y)
    other = make_verification_pairs(labels, 600, seed=1)
    assert not np.array_equal(idx_a, other[0])


def test_verification_pairs_unordered_labels_and_singletons():
    labels = np.array([3, 9, 3, 4, 9, 7])  # 7 and 4 have one record each
    idx_a, idx_b, issame = make_verification_pairs(labels, 200, seed=5)
    np.testing.assert_array_equal(labels[idx_a] == labels[idx_b], issame)
    assert np.all(idx_a != idx_b) and issame.sum() == 100
    assert set(labels[idx_a[~issame]]) | set(labels[idx_b[~issame]]) == {3, 4, 7, 9}


@pytest.mark.parametrize(
    ("labels", "num_pairs", "match"),
    [
        (np.array([0, 0, 1, 1]), 3, "num_pairs"),
        (np.array([0, 0, 1, 1]), 0, "num_pairs"),
        (np.array([0, 0, 0]), 2, "2 identities"),
        (np.array([0, 1, 2]), 2, "2 records"),
    ],
)
def test_verification_pairs_bad_arguments(labels, num_pairs, match):
    with pytest.raises(ValueError, match=match):
        make_verification_pairs(labels, num_pairs, seed=0)


def test_inside_grain_pipeline():
    src = SyntheticFaces(num_identities=3, images_per_identity=2, image_size=32)
    ds = grain.MapDataset.source(src).map(
        lambda r: {"image": r["image"].astype(np.float32) / 255.0, "label": r["label"]}
    )
    assert len(ds) == 6
    np.testing.assert_allclose(ds[4]["image"], src[4]["image"] / 255.0, rtol=1e-6)
    batches = list(ds.batch(2, drop_remainder=True))
    assert len(batches) == 3 and batches[0]["image"].shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), src.labels)
    shuffled = grain.MapDataset.source(src).seed(0).shuffle()
    assert sorted(int(shuffled[i]["label"]) for i in range(6)) == sorted(src.labels.tolist())


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("num_identities", 0, ">= 1"),
        ("images_per_identity", -1, ">= 1"),
        ("image_size", 31, "[32, 1024]"),
        ("image_size", 64.0, "[32, 1024]"),
        ("seed", -1, ">= 0"),
        ("identity_offset", -3, ">= 0"),
    ],
)
def test_bad_arguments(field, value, valid):
    kwargs = dict(num_identities=2, images_per_identity=2)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field) as info:
        SyntheticFaces(**kwargs)
    assert valid in str(info.value)
