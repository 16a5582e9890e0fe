"""load_face_data over RecordIO, TFDS and `.bin` verification sets; the conversion command; the
`.bin` verification reported beside pairs.txt by the evaluator."""

import dataclasses
import importlib.util
import io
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.smoke import get_config
from cure_jax import sharding
from cure_jax.config import apply_overrides, load_config
from cure_jax.embeddings import embed_eval_sets
from cure_jax.evaluation import backbone_metrics
from cure_jax.models.backbone import Backbone
from data_pipelines import convert
from data_pipelines.datasets import load_face_data
from data_pipelines.sources.verification_bin import read_bin

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_TFDS = all(importlib.util.find_spec(m) for m in ("tensorflow_datasets", "array_record"))


def jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buf, format="JPEG", quality=95)
    image = np.asarray(Image.open(buf)).copy()
    image[5:9, 3:15] = 255 - np.asarray(colour, np.uint8)  # a feature, so that images differ
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def lfw_like(tmp_path):
    """images/<name>/<name>_<n>.jpg for 4 people and a pairs.txt over them with 10 folds of one
    same and one different pair (a .bin's folds are arcface_torch's 10 contiguous ones)."""
    rng = np.random.default_rng(0)
    for name in ("Ann", "Bob", "Cy", "Dee"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for n in range(1, 6):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (tmp_path / "images" / name / f"{name}_{n:04d}.jpg").write_bytes(jpeg(colour))
    names = ("Ann", "Bob", "Cy", "Dee")
    pairs = [line for fold in range(10) for line in (
        f"{names[fold % 4]} {1 + fold % 3} {5 - fold % 2}",
        f"{names[fold % 4]} {1 + fold % 5} {names[(fold + 1 + fold % 3) % 4]} {5 - fold % 4}")]
    (tmp_path / "pairs.txt").write_text("10 1\n" + "\n".join(pairs) + "\n")
    return tmp_path


def data_config(**fields):
    return dataclasses.replace(get_config().data, image_size=16, **fields)


def assert_same_faces(a, b) -> None:
    np.testing.assert_array_equal(a.records.images, b.records.images)
    np.testing.assert_array_equal(a.records.labels, b.records.labels)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    assert a.identity_names == b.identity_names and a.num_classes == b.num_classes


def assert_same_face_data(a, b) -> None:
    """Every array a run reads from `FaceData`, bit for bit: training records, splits and each
    verification set (the records' extras aside: each source adds its own, unused by runs)."""
    assert_same_faces(a, b)
    assert a.records.images.dtype == b.records.images.dtype == np.uint8
    np.testing.assert_array_equal(a.holdout_indices, b.holdout_indices)
    assert a.drawn_pairs == b.drawn_pairs and a.skipped_files == b.skipped_files
    sets_a = {"": a.verification, **a.bin_verifications}
    sets_b = {"": b.verification, **b.bin_verifications}
    assert sets_a.keys() == sets_b.keys()
    for name, va in sets_a.items():
        vb = sets_b[name]
        assert (va is None) == (vb is None), name
        if va is None:
            continue
        for field in ("idx_a", "idx_b", "issame", "folds"):
            np.testing.assert_array_equal(getattr(va, field), getattr(vb, field), err_msg=field)
        np.testing.assert_array_equal(va.source.images, vb.source.images)
        np.testing.assert_array_equal(va.source.labels, vb.source.labels)


def test_recordio_source_loads_as_the_folder(lfw_like, tmp_path):
    assert convert.main(["folder-to-rec", str(lfw_like / "images"), str(tmp_path / "rec")]) == 0
    folder = load_face_data(data_config(source="folder", root=str(lfw_like / "images"),
                                        min_images=2), progress=False)
    rec = load_face_data(data_config(source="recordio", root=str(tmp_path / "rec"),
                                     min_images=2), progress=False)
    assert_same_faces(rec, folder)


@pytest.mark.skipif(not HAS_TFDS, reason='tensorflow-datasets is not installed (".[tfds]")')
def test_tfds_source_loads_as_the_folder(lfw_like, tmp_path):
    assert convert.main(["tfds-prepare", str(lfw_like / "images"), "--name", "lfw_like",
                         "--data-dir", str(tmp_path / "tfds")]) == 0
    folder = load_face_data(data_config(source="folder", root=str(lfw_like / "images")),
                            progress=False)
    tfds = load_face_data(data_config(source="tfds", tfds_name="lfw_like",
                                      root=str(tmp_path / "tfds")), progress=False)
    assert_same_faces(tfds, folder)


@pytest.mark.skipif(not HAS_TFDS, reason='tensorflow-datasets is not installed (".[tfds]")')
@pytest.mark.parametrize("verification", ["pairs.txt", "drawn among held-out people"])
def test_tfds_gives_the_folder_face_data_bit_for_bit(lfw_like, tmp_path, verification):
    assert convert.main(["tfds-prepare", str(lfw_like / "images"), "--name", "lfw_like",
                         "--data-dir", str(tmp_path / "tfds")]) == 0
    pairs = {"pairs": str(lfw_like / "pairs.txt")} if verification == "pairs.txt" else {}
    folder = load_face_data(data_config(source="folder", root=str(lfw_like / "images"),
                                        **pairs), progress=False)
    tfds = load_face_data(data_config(source="tfds", tfds_name="lfw_like",
                                      root=str(tmp_path / "tfds"), **pairs), progress=False)
    assert folder.verification is not None and bool(folder.drawn_pairs) == (not pairs)
    assert_same_face_data(tfds, folder)


def lfw_root():
    root = pathlib.Path(os.environ.get("CURE_JAX_LFW", REPO.parent / "shared" / "data" / "lfw"))
    if not (root / "images").is_dir():
        pytest.skip(f"LFW not found at {root} (set CURE_JAX_LFW to its folder)")
    return root


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TFDS, reason='tensorflow-datasets is not installed (".[tfds]")')
def test_lfw_through_tfds_gives_the_lfw_cure_face_data_bit_for_bit(tmp_path):
    """`--config lfw_cure` reads the same arrays from LFW's folder and from LFW prepared for
    TFDS, so that every figure of a run on one is the figure of a run on the other."""
    root = lfw_root()
    assert convert.main(["tfds-prepare", str(root / "images"), "--name", "lfw_faces",
                         "--data-dir", str(tmp_path / "tfds")]) == 0
    config = apply_overrides(load_config("lfw_cure"), [f"data.root={root / 'images'}",
                                                       f"data.pairs={root / 'pairs.txt'}"])
    folder = load_face_data(config.data, progress=False)
    tfds = load_face_data(apply_overrides(config, [
        "data.source=tfds", "data.tfds_name=lfw_faces", f"data.root={tmp_path / 'tfds'}"]).data,
        progress=False)
    assert folder.num_classes == 158 and len(folder.verification.idx_a) == 6000
    assert_same_face_data(tfds, folder)


def test_missing_settings_say_what_is_needed():
    with pytest.raises(ValueError, match="data.source=recordio needs data.root=<folder holding "
                       "train.rec>"):
        load_face_data(data_config(source="recordio"), progress=False)
    with pytest.raises(ValueError, match="data.source=tfds needs data.tfds_name"):
        load_face_data(data_config(source="tfds"), progress=False)


def test_config_accepts_the_new_sources_and_bins():
    config = apply_overrides(get_config(), ["data.source=recordio", "data.tfds_name=x",
                                            "data.verification_bins=a/lfw.bin,b/cfp_fp.bin"])
    assert config.data.source == "recordio"
    assert config.data.verification_bins == ("a/lfw.bin", "b/cfp_fp.bin")


def test_convert_reports_errors_without_a_traceback(tmp_path, capsys):
    assert convert.main(["rec-to-folder", str(tmp_path / "none"), str(tmp_path / "out")]) == 1
    assert "error: RecordIO file" in capsys.readouterr().err


def pixel_embed():
    """A fixed random projection of the pixels as `embed(params, batch_stats, images)`."""

    @jax.jit
    def embed(params, batch_stats, images):
        del batch_stats
        return images.reshape(images.shape[0], -1) @ params

    return embed, jax.random.normal(jax.random.key(0), (16 * 16 * 3, 8))


def test_bin_verification_is_reported_beside_pairs_with_the_same_numbers(lfw_like, tmp_path):
    assert convert.main(["pairs-to-bin", str(lfw_like), str(tmp_path / "lfw.bin")]) == 0
    assert len(read_bin(tmp_path / "lfw.bin")[0]) == 40
    config = get_config()
    config = dataclasses.replace(config, data=data_config(
        source="folder", root=str(lfw_like / "images"), pairs=str(lfw_like / "pairs.txt"),
        verification_bins=(str(tmp_path / "lfw.bin"),)))
    data = load_face_data(config.data, progress=False)
    assert list(data.bin_verifications) == ["lfw.bin"]
    embed, params = pixel_embed()
    centres = jnp.ones((data.num_classes, 8))
    embeddings = embed_eval_sets(embed, Backbone(params, {}), data, batch_size=128,
                                 mesh=sharding.make_mesh(1), mirror_train=False, flip_test=True)
    metrics = backbone_metrics(embeddings, data, centres)
    for key in ("verification_accuracy", "verification_std", "tar_at_far_1e-3",
                "verification_pairs"):
        assert metrics[f"{key}@lfw.bin"] == metrics[key], key
    assert metrics["verification_pairs"] == 20
    assert 0.0 < metrics["verification_accuracy"] < 1.0  # a measurement, not a degenerate one
