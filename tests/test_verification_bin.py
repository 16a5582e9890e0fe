"""Tests for data_pipelines.sources.verification_bin: safe reading of every form real `.bin`
files take, refusal of anything else, and verification identical to the pairs.txt path."""

import io
import os
import pathlib
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from cure_jax.metrics.verification import pair_distances, verify
from data_pipelines.pipelines import materialize
from data_pipelines.sources.lfw_pairs import PairsSource, read_pairs
from data_pipelines.sources.verification_bin import (
    BinPairsSource,
    UnsafePickleError,
    kfold_ids,
    pairs_to_bin,
    read_bin,
    write_bin,
)


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (BINSTRING), as Python 2 pickled them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # NumPy 1 (under Python 2) named its module numpy.core.
    return buf.getvalue().replace(b"numpy._core.", b"numpy.core.")


def jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), colour).save(buf, format="JPEG")
    return buf.getvalue()


IMAGES = [jpeg((40 * i, 255 - 40 * i, 7 * i)) for i in range(4)]
ISSAME = [True, False]


def as_arrays(images):
    return [np.frombuffer(image, np.uint8) for image in images]


FORMS = {
    "python2 strings and bools": lambda: py2_pickle((IMAGES, ISSAME)),
    "python2 numpy arrays": lambda: py2_pickle((as_arrays(IMAGES), np.array(ISSAME))),
    "python2 numpy bool scalars": lambda: py2_pickle((IMAGES, [np.bool_(s) for s in ISSAME])),
    **{f"protocol {p}": (lambda p=p: pickle.dumps((IMAGES, ISSAME), protocol=p))
       for p in (2, 3, 4, 5)},
    **{f"protocol {p} numpy": (lambda p=p: pickle.dumps(
        (as_arrays(IMAGES), np.array(ISSAME)), protocol=p)) for p in (2, 4, 5)},
    "protocol 2 bytearray": lambda: pickle.dumps(([bytearray(b) for b in IMAGES], ISSAME), 2),
    "protocol 5 bytearray": lambda: pickle.dumps(([bytearray(b) for b in IMAGES], ISSAME), 5),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_reads_every_form_real_files_take(form, tmp_path):
    path = tmp_path / "set.bin"
    path.write_bytes(FORMS[form]())
    images, issame = read_bin(path)
    assert images == IMAGES and all(type(image) is bytes for image in images)
    assert issame.dtype == bool and issame.tolist() == ISSAME


def test_python2_pickle_really_holds_byte_strings():
    # The emulation must produce what Python 2 wrote: no globals, BINSTRING opcodes.
    data = py2_pickle((IMAGES, ISSAME))
    assert b"_codecs" not in data and pickle.SHORT_BINSTRING in data
    assert pickle.loads(data, encoding="bytes") == (IMAGES, ISSAME)


class Exploit:
    """Pickles as a call of `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def exploits(marker: pathlib.Path) -> dict[str, bytes]:
    command = f"touch {marker}"
    return {
        "os.system": pickle.dumps((Exploit(os.system, command), ISSAME)),
        "eval": pickle.dumps(([Exploit(eval, f"open({str(marker)!r}, 'w')")], ISSAME)),
        "python2 GLOBAL opcode": (b"\x80\x02cposix\nsystem\nq\x00U" + bytes([len(command)])
                                  + command.encode() + b"\x85R."),
        "numpy object array": pickle.dumps(
            (np.array([Exploit(os.system, command)], dtype=object), ISSAME), protocol=2),
        "inside issame": pickle.dumps((IMAGES, [Exploit(os.system, command), True])),
    }


@pytest.mark.parametrize("name", ["os.system", "eval", "python2 GLOBAL opcode",
                                  "numpy object array", "inside issame"])
def test_crafted_pickles_run_nothing(name, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(exploits(marker)[name])
    with pytest.raises(UnsafePickleError, match=r"evil\.bin: .*refused") as err:
        read_bin(path)
    assert not marker.exists()
    if name != "numpy object array":
        assert "the pickle names the global" in str(err.value)
    else:
        assert "dtype" in str(err.value)


def test_numpy_globals_are_admitted_only_as_numpy_pickles_use_them(tmp_path):
    path = tmp_path / "evil.bin"
    reconstruct = np.zeros(1).__reduce__()[0]  # what NumPy pickles arrays with
    huge = Exploit(reconstruct, np.ndarray, (10**12,), b"b")
    path.write_bytes(pickle.dumps(([huge], ISSAME)))
    with pytest.raises(UnsafePickleError, match=r"_reconstruct\(numpy.ndarray, \(1000000000000,\)"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([Exploit(np.ndarray, (4,), "O")], ISSAME)))
    with pytest.raises(ValueError, match="not a readable .bin pickle"):  # ndarray is not callable
        read_bin(path)
    path.write_bytes(pickle.dumps(([Exploit(np.dtype, "O")], ISSAME)))
    with pytest.raises(UnsafePickleError, match="NumPy dtype 'O' refused"):
        read_bin(path)


def test_the_refusal_names_the_global(tmp_path):
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps((Exploit(os.system, "true"), ISSAME)))
    with pytest.raises(UnsafePickleError, match=r"the global (posix|os)\.system"):
        read_bin(path)


@pytest.mark.parametrize("payload, message", [
    (([b"a"], [True]), "1 images for 1 pairs"),
    (([b"a", 3], [True]), "image 1 is a int"),
    (([b"a", b"b"], [1]), "issame_list must be a list of bools"),
    ((b"a", b"b", b"c"), r"holds the pair \(bins, issame_list\)"),
])
def test_malformed_contents_are_named(payload, message, tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match=message):
        read_bin(path)


def test_a_truncated_bin_is_one_clear_error(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(pickle.dumps((IMAGES, ISSAME), protocol=4)[:-20])
    with pytest.raises(ValueError, match=r"cut\.bin: not a readable \.bin pickle"):
        read_bin(path)


def test_write_then_read_and_source(tmp_path):
    path = tmp_path / "set.bin"
    write_bin(path, IMAGES, ISSAME)
    source = BinPairsSource(path, image_size=4)
    idx_a, idx_b, issame, folds = source.pair_indices
    assert idx_a.tolist() == [0, 2] and idx_b.tolist() == [1, 3] and issame.tolist() == ISSAME
    assert folds.tolist() == [0, 1]
    record = source[3]
    assert record["image"].shape == (4, 4, 3) and record["label"] == -1
    assert pickle.loads(path.read_bytes()) == (IMAGES, ISSAME)  # insightface's plain load


def test_kfold_ids_match_sklearn_kfold():
    assert kfold_ids(23, 10).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] + [
        f for f in range(3, 10) for _ in range(2)]
    assert np.array_equal(kfold_ids(6000), np.repeat(np.arange(10), 600))


def tiny_lfw(root: pathlib.Path) -> pathlib.Path:
    for name, count in (("Ann", 3), ("Ben", 2), ("Cy", 1)):
        (root / "images" / name).mkdir(parents=True)
        for n in range(1, count + 1):
            (root / "images" / name / f"{name}_{n:04d}.jpg").write_bytes(
                jpeg((30 * n, 20 * len(name), 90)))
    (root / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 1 Ben 2\nBen 1 2\nCy 1 Ann 3\n")
    return root


def test_pairs_to_bin_stores_the_files_bytes_in_pair_order(tmp_path):
    root = tiny_lfw(tmp_path / "lfw")
    assert pairs_to_bin(root, root / "pairs.txt", tmp_path / "lfw.bin") == 4
    images, issame = read_bin(tmp_path / "lfw.bin")
    files = [("Ann", 1), ("Ann", 2), ("Ann", 1), ("Ben", 2), ("Ben", 1), ("Ben", 2), ("Cy", 1),
             ("Ann", 3)]
    assert images == [(root / "images" / n / f"{n}_{i:04d}.jpg").read_bytes() for n, i in files]
    assert issame.tolist() == [True, False, True, False]


def lfw_root() -> pathlib.Path:
    repo = pathlib.Path(__file__).resolve().parents[1]
    root = pathlib.Path(os.environ.get("CURE_JAX_LFW", repo.parent / "shared" / "data" / "lfw"))
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"LFW pairs.txt not found under {root} (set CURE_JAX_LFW to its folder)")
    return root


def pixel_projection_distances(source, idx_a, idx_b) -> np.ndarray:
    """Pair distances of a fixed random projection of the pixels, with the flip test.

    Only the pairs' images are projected, first images then second ones, in pair order: a BLAS
    product may round a row differently with the rows around it (OpenBLAS's Haswell kernel does,
    its SkylakeX kernel did not), so two sources that hold the same pairs among other images get
    bit-equal products only when the products see the same rows.
    """
    records = materialize(source, progress=False)
    images = records.images[np.concatenate([idx_a, idx_b])]
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5
    mirrored = images[:, :, ::-1].reshape(len(images), -1).astype(np.float32)
    w = np.random.default_rng(0).standard_normal((x.shape[1], 32)).astype(np.float32)
    emb = x @ w + (mirrored / 255.0 - 0.5) @ w
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return pair_distances(emb[:len(idx_a)], emb[len(idx_a):])


def test_bin_from_lfw_pairs_verifies_exactly_as_the_pairs_file(tmp_path):
    root = lfw_root()
    # The first 15 same and 15 different pairs of each of the 10 folds: the folds stay contiguous.
    lines = (root / "pairs.txt").read_text().splitlines()[1:]
    subset = [line for fold in range(10) for kind in range(2)
              for line in lines[600 * fold + 300 * kind:600 * fold + 300 * kind + 15]]
    (tmp_path / "pairs.txt").write_text("10 15\n" + "\n".join(subset) + "\n")
    assert len(read_pairs(tmp_path / "pairs.txt")) == 300
    pairs_to_bin(root, tmp_path / "pairs.txt", tmp_path / "lfw.bin")
    by_pairs = PairsSource(root, tmp_path / "pairs.txt", image_size=32)
    by_bin = BinPairsSource(tmp_path / "lfw.bin", image_size=32)
    a, b, same, folds = by_pairs.pair_indices
    a2, b2, same2, folds2 = by_bin.pair_indices
    np.testing.assert_array_equal(same, same2)
    np.testing.assert_array_equal(folds, folds2)
    for i in (0, 77, 299):
        np.testing.assert_array_equal(by_pairs[a[i]]["image"], by_bin[a2[i]]["image"])
        np.testing.assert_array_equal(by_pairs[b[i]]["image"], by_bin[b2[i]]["image"])
    dist = pixel_projection_distances(by_pairs, a, b)
    dist2 = pixel_projection_distances(by_bin, a2, b2)
    np.testing.assert_array_equal(dist, dist2)
    result, result2 = verify(dist, same, folds_P=folds), verify(dist2, same2)
    assert result == result2
    assert 0.5 < result.accuracy < 1.0  # a real measurement, not a degenerate one
