"""tools/bench_kmeans.py runs end to end on a small file of embeddings, and its table says what
the implementations did."""

import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "bench_kmeans.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_bench_kmeans_on_embeddings_with_and_without_bounds(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    rows = centres[rng.integers(0, 6, 400)] + 0.3 * rng.normal(size=(400, 16))
    np.savez(tmp_path / "emb.npz", train=rows[:300].astype(np.float32),
             holdout=rows[300:].astype(np.float32))
    out = _bench("--embeddings", str(tmp_path / "emb.npz"), "--ks", "8", "--skip-refresh",
                 "--impls", "random,random+yinyang,k-means||+yinyang,sklearn")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "data: N=400, D=16, unit rows of" in out.stdout
    # Cells are separated by " | " (a name's own pipes are escaped, with no spaces around).
    table = {cells[1]: cells for cells in (
        line.strip(" |").split(" | ") for line in out.stdout.splitlines()
        if line.startswith("| 8 |"))}
    assert list(table) == ["random", "random+yinyang", "k-means\\|\\|+yinyang", "sklearn"]
    # Columns: K, name, seeding, time, CPU, compile, iterations, passes, inertia, ...
    assert table["random+yinyang"][8] == table["random"][8]  # Lloyd's result, to the digit
    assert table["random"][7] == f"{float(table['random'][6]) + 1:.2f}"  # Lloyd: iterations + 1
    assert float(table["random+yinyang"][7]) < float(table["random"][7])
    assert table["sklearn"][7] == "-"


def test_bench_kmeans_names_what_it_cannot_run(tmp_path):
    out = _bench("--impls", "random,elkan")
    assert out.returncode == 2 and "unknown implementation(s) ['elkan']" in out.stderr
    out = _bench("--embeddings", str(tmp_path / "missing.npz"))
    assert out.returncode != 0 and "missing.npz: no such file" in out.stderr


def test_bench_kmeans_passes_the_candidates_per_centre_to_ours(monkeypatch):
    import argparse
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    bench = importlib.import_module("tools.bench_kmeans")
    x = np.zeros((40, 4), np.float32)
    args = argparse.Namespace(iters=5, rounds=3, oversampling=1.0, restarts=1, local_trials=5)
    for name in ("k-means||", "k-means||+yinyang", "k-means||/5", "k-means++", "random"):
        assert bench.make_impl(name, x, 4, args).options["num_local_trials"] == 5
    # A named variant keeps its own count; without the option, the library's default (None).
    assert bench.make_impl("k-means++/2", x, 4, args).options["num_local_trials"] == 2
    args.local_trials = None
    assert bench.make_impl("k-means||", x, 4, args).options["num_local_trials"] is None
