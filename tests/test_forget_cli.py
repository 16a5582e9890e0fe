"""End to end: `python -m cure_jax.forget` on a smoke teacher. Requests in sequence, a request
made twice, a refused request that changes nothing, a killed request that resumes, and the
self-contained HTML report with its key figures.

The smoke teacher is far too weak for a good search (its figures are in docs/RESULTS.md for the
default teacher): these tests set a high false-accept rate (search and confirmation) so that
the search finds something, and check what the command does with it, not how well it finds.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from cure_jax import config as config_lib
from cure_jax import forget, ledger, train
from cure_jax.request_photos import write_holdout_photos
from data_pipelines.datasets import load_face_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
# More verification people than the smoke config has: the threshold is calibrated on them.
DATA = ["--set", "data.num_verification_identities=20",
        "--set", "data.verification_images_per_identity=6"]
SERVE = ["--aligned", "--far", "0.3", "--set", "forget.confirm_far=0.3",
         "--set", "forget.max_share=0.9",
         "--set", "forget.steps=4"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A finished smoke teacher, and request folders of identities 3 and 5."""
    root = tmp_path_factory.mktemp("forget")
    assert train.main(["--config", "smoke", "--stage", "teacher", "--workdir",
                       str(root / "run"), *DATA]) == 0
    config = config_lib.apply_overrides(config_lib.load_config("smoke"), DATA[1::2])
    data = load_face_data(config.data, progress=False)
    for identity in ("3", "5"):
        write_holdout_photos(data, identity, root / f"person{identity}", count=2)
    return root


def _copy(smoke_run, tmp_path) -> pathlib.Path:
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run / "run", workdir)
    return workdir


def _forget(workdir, photos, *extra):
    return forget.main(["--config", "smoke", "--workdir", str(workdir), "--photos", str(photos),
                        *DATA, *SERVE, *extra])


def _snapshot(folder: pathlib.Path) -> dict:
    """{relative path: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_requests_in_sequence_a_repeat_and_the_report(smoke_run, tmp_path, capsys):
    workdir = _copy(smoke_run, tmp_path)
    assert _forget(workdir, smoke_run / "person3") == 0
    out = capsys.readouterr().out
    # The training it announces: epochs x batches per epoch = steps, as `forget.steps` asks.
    epochs, batches, _batch_size, steps = map(int, re.search(
        r"\((\d+) epochs of (\d+) batches of (\d+): (\d+) steps\)", out).groups())
    assert epochs * batches == steps >= 4  # forget.steps=4 (SERVE)
    entries = ledger.read(workdir)
    assert [(e["number"], e["status"], e["from"]) for e in entries] == [(1, "served", "teacher")]
    first = entries[0]
    folder = workdir / first["folder"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["search"]["found"] == first["found_count"] == len(first["found"])

    # The report: one page with its pictures inside and the key figures.
    page = (folder / "report.html").read_text()
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page)
    assert 'src="http' not in page and "neighbours.png\"" not in page
    for figure in (f"<strong>{first['found_count']}</strong>",
                   f"{metrics['search']['threshold']:.4f}",
                   first["provenance"]["student_weights_sha256"],
                   first["provenance"]["teacher_weights_sha256"],
                   first["provenance"]["student_checkpoint_sha256"],
                   first["photos"][0]["sha256"][:16], "TAR@FAR=1e-3", "Membership inference",
                   first["started"], first["finished"]):
        assert figure in page, figure
    assert (folder / "report.md").read_text().count("| ") > 20

    # The same photos again: answered from the ledger, nothing changes.
    before = _snapshot(workdir)
    capsys.readouterr()
    assert _forget(workdir, smoke_run / "person3") == 0
    assert "served as request 1" in capsys.readouterr().out
    assert _snapshot(workdir) == before

    # A second person: starts from the first student; the first one's images are not searched.
    assert _forget(workdir, smoke_run / "person5") == 0
    second = ledger.read(workdir)[1]
    assert (second["number"], second["from"]) == (2, "request 1")
    assert not set(second["found"]) & set(first["found"])
    metrics2 = json.loads((workdir / second["folder"] / "metrics.json").read_text())
    assert [p["request"] for p in metrics2["people"]] == [1, 2]
    assert metrics2["search"]["forgotten_before"] == first["found_count"]
    report2 = (workdir / second["folder"] / "report.md").read_text()
    assert "| person (request) | teacher | after 1 | after 2 |" in report2


def test_a_refused_request_changes_nothing(smoke_run, tmp_path, capsys):
    workdir = _copy(smoke_run, tmp_path)
    before = _snapshot(workdir)
    # Nearly every image matches at this rate: more than half of the training set.
    code = forget.main(["--config", "smoke", "--workdir", str(workdir), "--photos",
                        str(smoke_run / "person3"), *DATA, "--aligned", "--far", "0.9"])
    assert code == forget.REFUSED
    assert "most of the model" in capsys.readouterr().err
    assert _snapshot(workdir) == before


def test_a_killed_request_resumes(smoke_run, tmp_path):
    workdir = _copy(smoke_run, tmp_path)
    # Killed after step 3, before its checkpoint (the loop saves after `after_step`): the
    # checkpoint of step 2 is the one to resume from.
    command = [sys.executable, "-m", "tests.crash_cli", "3", "cure_jax.forget", "--config",
               "smoke", "--workdir", str(workdir), "--photos", str(smoke_run / "person3"),
               *DATA, *SERVE, "--set", "run.checkpoint_every=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 75, out.stderr
    assert ledger.read(workdir)[0]["status"] == "started"
    out = subprocess.run([sys.executable, "-m", "cure_jax.forget", *command[5:]], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr
    assert "resuming from step 2" in out.stdout
    entry = ledger.read(workdir)[0]
    assert entry["status"] == "served" and (workdir / entry["report"]).exists()
