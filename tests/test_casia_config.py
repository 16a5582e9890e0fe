"""`--config casia_ir100`: the CURE paper's setup, its clear errors without CASIA-WebFace, and its
first steps through the stages on a small RecordIO and `.bin` sets written here (the model
shrunk by overrides, the code path the same)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from cure_jax import train
from cure_jax.config import ConfigError, load_config
from data_pipelines.sources.recordio_faces import write_faces_rec
from data_pipelines.sources.verification_bin import write_bin

BINS = ("lfw.bin", "cfp_fp.bin", "agedb_30.bin")


def jpeg(rng, base, side: int = 112) -> bytes:
    """A face stand-in: the person's colour pattern `base` [4, 4, 3] plus noise."""
    pattern = np.kron(base, np.ones((side // 4, side // 4, 1)))
    image = np.clip(pattern + rng.normal(0, 20, pattern.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def casia_like(tmp_path, monkeypatch):
    """faces_webface_112x112 in miniature: 12 people x 6 images in train.rec, and three .bin
    sets of 20 pairs; `$CURE_JAX_CASIA` points at it."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "faces_webface_112x112"
    people = rng.uniform(0, 255, (12, 4, 4, 3))
    write_faces_rec(folder, [f"{c:07d}" for c in range(12)], [6] * 12,
                    [jpeg(rng, base) for base in people for _ in range(6)], image_shape=(112, 112))
    for name in BINS:  # 20 pairs of unseen people, same and different in turn
        unseen = rng.uniform(0, 255, (20, 4, 4, 3))
        images = [jpeg(rng, unseen[k if i == 0 or k % 2 == 0 else (k + 1) % 20])
                  for k in range(20) for i in range(2)]
        write_bin(folder / name, images, [k % 2 == 0 for k in range(20)])
    monkeypatch.setenv("CURE_JAX_CASIA", str(folder))
    return folder


def test_the_config_is_the_papers_setup(casia_like):
    config = load_config("casia_ir100")
    model = config.model
    assert (model.depth, model.width, model.embedding_dim) == ("r100", 1.0, 512)
    assert (model.head, model.scale, model.margin, config.data.image_size) == (
        "arcface", 64.0, 0.5, 112)
    assert config.data.source == "recordio" and config.data.root == str(casia_like)
    assert config.data.verification_bins == tuple(str(casia_like / n) for n in BINS)
    assert config.unlearn.forget_identities == 1222 and config.cure.refresh_every == 5.0
    # k-means||: greedy k-means++ would read the embeddings once per centre, 10,572 times.
    assert config.cure.kmeans_init == config.baselines.kmeans_init == "k-means||"
    student = config.student
    assert (2 * student.batch_size, student.epochs, student.milestones, student.decay) == (
        128, 50, (5.0, 10.0), 0.1)


def test_without_casia_the_config_says_what_to_set(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CURE_JAX_CASIA", raising=False)
    with pytest.raises(ConfigError, match=r"reads CASIA-WebFace from \$CURE_JAX_CASIA, which is "
                       "not set"):
        load_config("casia_ir100")
    monkeypatch.setenv("CURE_JAX_CASIA", str(tmp_path))
    assert train.main(["--config", "casia_ir100", "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} holds no train.rec and no train.idx" in err
    assert not (tmp_path / "run").exists()


# The model and the run shrunk to fit a test; data, margin head and every stage as configured.
SHRUNK = ["model.depth=r18", "model.width=0.0625", "model.embedding_dim=32",
          "teacher.batch_size=16", "teacher.epochs=10", "teacher.warmup_epochs=0",
          "student.batch_size=4", "student.epochs=2", "unlearn.forget_identities=2",
          "cure.forget_clusters=2", "cure.retain_clusters=4", "cure.refresh_every=1",
          "cure.kmeans_restarts=1", "eval.batch_size=32", "run.log_every=1",
          "run.checkpoint_every=4", "run.progress=false"]


@pytest.mark.slow
def test_first_steps_through_the_stages(casia_like, tmp_path):
    workdir = tmp_path / "run"
    argv = ["--config", "casia_ir100", "--workdir", str(workdir)]
    assert train.main([*argv, *[a for s in SHRUNK for a in ("--set", s)]]) == 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["head"] == "arcface" and config["model"]["scale"] == 64.0
    assert config["data"]["image_size"] == 112 and config["data"]["source"] == "recordio"
    log = [json.loads(line) for line in (workdir / "teacher" / "metrics.jsonl").open()]
    assert log[-1]["step"] == 10 * (12 * 5 // 16)  # 12 people x 5 training images, 10 epochs
    teacher = json.loads((workdir / "teacher" / "eval.json").read_text())
    metrics = json.loads((workdir / "cure" / "metrics.json").read_text())
    for name in BINS:
        assert teacher[f"verification_pairs@{name}"] == 20
        assert 0.0 <= metrics[f"verification_after@{name}"] <= 1.0
    assert "verification_accuracy" not in teacher  # the .bin sets verify; nobody is held out
    assert metrics["method"] == "cure" and metrics["forget_identities"] == 2
    cure_log = [json.loads(line) for line in (workdir / "cure" / "metrics.jsonl").open()]
    assert cure_log[-1]["step"] == 2 * (2 * 5 // 4)  # 2 people x 5 images, batches of 4
    assert all(np.isfinite(entry["loss"]) for entry in cure_log)
