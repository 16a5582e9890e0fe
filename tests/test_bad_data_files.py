"""Bad dataset files stop `python -m cure_jax.train` before training with one line that names
the file, exit status 1, and nothing written into the run folder: a crafted `.bin` pickle, a
truncated `.rec`, and an `.idx` that disagrees with its `.rec`."""

import io
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cure_jax import train
from data_pipelines.sources.recordio_faces import write_faces_rec

REPO = pathlib.Path(__file__).resolve().parents[1]


def png(rng, side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_rec(out: pathlib.Path, *, side: int = 20, counts=(5, 5, 5, 5)) -> pathlib.Path:
    rng = np.random.default_rng(side)
    images = [png(rng, side) for _ in range(sum(counts))]
    write_faces_rec(out, [f"id{c}" for c in range(len(counts))], list(counts), images,
                    image_shape=(side, side))
    return out


class Exploit:
    """Pickles as a call of `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def crafted_bin(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    """(a .bin whose pickle would create a marker file, the marker)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Exploit(os.system, f"touch {marker}")], [True])))
    return path, marker


def truncated_rec(tmp_path) -> pathlib.Path:
    rec = write_rec(tmp_path / "rec")
    data = (rec / "train.rec").read_bytes()
    (rec / "train.rec").write_bytes(data[:-10])  # into the last record
    return rec


def foreign_idx(tmp_path, side: int) -> pathlib.Path:
    """A .rec with the .idx of another .rec whose images have another size, so other offsets:
    larger ones point past the end, smaller ones into the middle of records."""
    rec = write_rec(tmp_path / "rec")
    other = write_rec(tmp_path / "other", side=side)
    (rec / "train.idx").write_bytes((other / "train.idx").read_bytes())
    return rec


def bad_case(name: str, tmp_path) -> tuple[list[str], str]:
    """(--set overrides, the file the error must name) of each bad input."""
    if name == "crafted pickle":
        rec = write_rec(tmp_path / "rec")
        path, _ = crafted_bin(tmp_path)
        return [f"data.root={rec}", f"data.verification_bins={path}"], str(path)
    if name == "truncated rec":
        rec = truncated_rec(tmp_path)
        return [f"data.root={rec}"], str(rec / "train.rec")
    rec = foreign_idx(tmp_path, side=24 if name == "idx of a larger rec" else 16)
    return [f"data.root={rec}"], str(rec / "train")  # train.rec or train.idx


BAD_CASES = ["crafted pickle", "truncated rec", "idx of a larger rec", "idx of a smaller rec"]


def settings(overrides) -> list[str]:
    return ["data.source=recordio", "data.holdout_identities=0", "teacher.batch_size=4",
            "student.batch_size=4", *overrides]


def argv(workdir, overrides) -> list[str]:
    return ["--config", "smoke", "--workdir", str(workdir),
            *[arg for s in settings(overrides) for arg in ("--set", s)]]


@pytest.mark.parametrize("name", BAD_CASES)
def test_a_bad_file_stops_the_run_before_training_naming_it(name, tmp_path, capsys):
    overrides, named = bad_case(name, tmp_path)
    workdir = tmp_path / "run"
    assert train.main(argv(workdir, overrides)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err, err
    assert not workdir.exists()
    assert not (tmp_path / "pwned").exists()


def test_the_same_rec_with_its_own_idx_trains(tmp_path):
    """The bad cases above differ from a working run only by the bad file."""
    from cure_jax import stages
    from cure_jax.config import apply_overrides, load_config

    rec = write_rec(tmp_path / "rec")
    config = apply_overrides(load_config("smoke"), settings([f"data.root={rec}"]))
    start = stages.start(config, tmp_path / "run", [])
    assert len(start.data.records) == 20 and (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_CASES)
def test_the_command_line_exits_with_status_1(name, tmp_path):
    overrides, named = bad_case(name, tmp_path)
    workdir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "cure_jax.train", *argv(workdir, overrides)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not workdir.exists() and not (tmp_path / "pwned").exists()
