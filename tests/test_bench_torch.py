"""The side-by-side benchmark against PyTorch: its torch losses against ours, and the tool itself
on the smoke config, so that neither drifts from the package."""

import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.losses import cure as cure_losses
from cure_jax.losses import dispersion, margin

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install -e '.[torch]'")
from tools import torch_losses  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def arrays(seed=0, batch=12, dim=16, classes=5):
    rng = np.random.default_rng(seed)
    return {"emb": rng.normal(size=(batch, dim)).astype(np.float32),
            "target": rng.normal(size=(batch, dim)).astype(np.float32),
            "cos": rng.uniform(-1, 1, (batch, classes)).astype(np.float32),
            "labels": rng.integers(0, classes, batch).astype(np.int32),
            "centroids": rng.normal(size=(classes, dim)).astype(np.float32),
            "groups": (np.arange(batch) // 3).astype(np.int32)}


def t(x):
    return torch.from_numpy(x).long() if x.dtype == np.int32 else torch.from_numpy(x)


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_loss_matches_ours(kind):
    a = arrays()
    kwargs = dict(kind=kind, scale=32.0, margin=0.5 if kind == "arcface" else 0.35)
    ours = margin.margin_loss(jnp.asarray(a["cos"]), jnp.asarray(a["labels"]), **kwargs)
    theirs = torch_losses.margin_loss(t(a["cos"]), t(a["labels"]), **kwargs)
    np.testing.assert_allclose(float(theirs), float(ours), rtol=1e-6)


@pytest.mark.parametrize("retain_mode, feature_match_on", [("nearest", "raw"), ("mean", "unit")])
def test_cure_terms_match_ours(retain_mode, feature_match_on):
    a, b = arrays(1), arrays(2)
    hyper = dict(temperature_pl=0.05, temperature_fd=0.1, margin=-0.2, retain_mode=retain_mode,
                 feature_match_on=feature_match_on)
    weights = cure_losses.CureWeights(pl=1.0, cosf=0.5, con=2.0, cosr=10.0, fm=0.0, fd=3.0)
    inputs = dict(student_forget=a["emb"], teacher_forget=a["target"], head_logits=a["cos"],
                  pseudo_labels=a["labels"], student_retain=b["emb"], teacher_retain=b["target"],
                  retain_centroids=b["centroids"])
    total, terms = cure_losses.cure_loss(**{k: jnp.asarray(v) for k, v in inputs.items()},
                                         weights=weights, **hyper)
    total_t, terms_t = torch_losses.cure_loss(
        {name: getattr(weights, name) for name in torch_losses.TERMS},
        **{k: t(v) for k, v in inputs.items()}, **hyper)
    for name in torch_losses.TERMS:
        np.testing.assert_allclose(float(terms_t[name]), float(terms[name]), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    assert float(terms_t["con"]) > 0  # the margin lets both hinges act
    np.testing.assert_allclose(float(total_t), float(total), rtol=1e-5)


@pytest.mark.parametrize("kind", ["mean", "hard", "uniformity"])
def test_dispersion_matches_ours(kind):
    a = arrays(3)
    ours = dispersion.dispersion_loss(jnp.asarray(a["emb"]), jnp.asarray(a["groups"]), kind=kind,
                                      t=2.0)
    theirs = torch_losses.dispersion_loss(t(a["emb"]), t(a["groups"]), kind=kind, t=2.0)
    np.testing.assert_allclose(float(theirs), float(ours), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bench_torch_runs_on_the_smoke_config():
    """Float32 and bfloat16 (cure_jax's model.dtype against torch's autocast) side by side, with
    the share-of-peak columns a GPU would get."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_torch.py"), "--config",
                          "smoke", "--rounds", "1", "--steps", "1", "--kinds", "teacher,cure",
                          "--precisions", "float32,bfloat16", "--peak-tflops", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "in cure_jax and in the torch twin" in out.stdout  # the parameter counts agree
    parity = [line for line in out.stdout.splitlines() if line.startswith("parity, ")]
    assert len(parity) == 4
    # bfloat16 is checked by eye in the tool; here it must at least be the same computation from
    # the same weights (a twin left with the float32 check's two updates is 40-100% off).
    for line in parity:
        relative = float(line.split("(relative ")[1].split(")")[0])
        assert relative < (1e-4 if "float32" in line else 5e-2), line
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| step "))
    for column in ("cure_jax ms", "cure_jax bf16 ms", "torch AMP bf16 CL", "% of peak",
                   "cure_jax bf16 / AMP bf16 CL"):
        assert column in header, column
    rows = [line for line in lines if line.startswith("| ") and line != header]
    assert [row.split(" (")[0] for row in rows] == ["| teacher step", "| CURE step"]
    assert all(len(row.split(" | ")) == len(header.split(" | ")) for row in rows)
