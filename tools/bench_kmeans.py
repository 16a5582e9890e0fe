"""Benchmark cure_jax.clustering.kmeans against scikit-learn on face-embedding-like data.

Data: N unit vectors in D = 512 around 1,000 random unit centres (Gaussian noise of the same
norm as a centre, then normalised: cosine to the centre about 0.7, like one identity's faces).
Both implementations see the same float32 array, run k-means++ and at most 20 Lloyd iterations,
and the times cover seeding and iterations end to end (ours after compilation, which is
reported on its own). Inertias are recomputed in float64 from each one's centroids and labels.

OpenBLAS: this environment may set OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which change the
kernels NumPy (hence scikit-learn) uses. For a fair comparison run it twice:

    python tools/bench_kmeans.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/bench_kmeans.py

`--quick` runs a smaller problem (N = 6,000, K = 50 and 200) in well under a minute.
"""

import argparse
import os
import sys
import time

import jax
import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus

import cure_jax  # noqa: F401  (sets XLA flags before jax initialises)
from cure_jax import clustering


def make_data(n: int, d: int, num_centres: int, seed: int) -> np.ndarray:
    """[n, d] float32 unit vectors scattered around `num_centres` random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_centres, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, num_centres, n)] + rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def inertia64(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    diff = x.astype(np.float64) - np.asarray(centroids, np.float64)[np.asarray(labels)]
    return float(np.einsum("nd,nd->", diff, diff))


def timed(fn, repeats: int = 1):
    """(result, best wall time in s) of `fn()` over `repeats` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def bench_ours(x, k, *, iters, tol, repeats, seed=0):
    key = jax.random.key(seed)

    def run():
        return jax.block_until_ready(
            clustering.kmeans(key, x, num_clusters=k, num_iters=iters, tol=tol)
        )

    # First call compiles and runs; compile time = first call minus a steady-state call.
    _, first = timed(run)
    res, t = timed(run, repeats)
    return {
        "impl": f"cure_jax tol={tol:g}",
        "time": t,
        "compile": max(first - t, 0.0),
        "iters": int(res.iterations),
        "inertia": inertia64(x, res.centroids, res.assignment),
    }


def bench_sklearn(x, k, *, iters, tol, seed=0):
    km = KMeans(k, init="k-means++", n_init=1, max_iter=iters, tol=tol, random_state=seed)
    km, t = timed(lambda: km.fit(x))
    return {
        "impl": f"sklearn tol={tol:g}",
        "time": t,
        "compile": None,
        "iters": int(km.n_iter_),
        "inertia": inertia64(x, km.cluster_centers_, km.labels_),
    }


def bench_init(x, k, seed=0):
    """Seeding alone: sklearn's kmeans_plusplus; ours as a 1-iteration run (an upper bound)."""
    _, t_sk = timed(lambda: kmeans_plusplus(x, k, random_state=seed))
    ours = bench_ours(x, k, iters=1, tol=0.0, repeats=1, seed=seed)
    return t_sk, ours["time"]


def bench_refresh(x, k, *, iters, repeats):
    """CURE's cluster refresh on the forget embeddings: labels from given centroids, or a rerun."""
    ours = bench_ours(x, k, iters=iters, tol=0.0, repeats=3 * repeats)
    sk = bench_sklearn(x, k, iters=iters, tol=0.0)
    centroids = clustering.kmeans(jax.random.key(1), x, num_clusters=k).centroids

    def labels():
        return jax.block_until_ready(clustering.pseudo_labels(x, centroids)[1])

    timed(labels)  # compile
    _, t_labels = timed(labels, 5 * repeats)
    return t_labels, ours, sk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N and K, for a smoke run")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of our k-means")
    parser.add_argument("--skip-init", action="store_true", help="skip the seeding-only rows")
    args = parser.parse_args()
    n, ks = (6_000, (50, 200)) if args.quick else (36_000, (100, 1_000))
    x = make_data(n, 512, 1_000, seed=0)
    blas = {v: os.environ.get(v, "(unset)") for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}

    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, {blas}")
    print(f"data: N={n}, D=512, 1000 true centres, unit norm; max {args.iters} iterations\n")
    print("| K | implementation | iterations | time (s) | compile (s) | inertia | sklearn/ours |")
    print("|---|---|---|---|---|---|---|")
    for k in ks:
        ours = bench_ours(x, k, iters=args.iters, tol=0.0, repeats=args.repeats)
        rows = [ours, bench_ours(x, k, iters=args.iters, tol=1e-4, repeats=args.repeats)]
        rows += [bench_sklearn(x, k, iters=args.iters, tol=t) for t in (0.0, 1e-4)]
        for r in rows:
            compile_s = "-" if r["compile"] is None else f"{r['compile']:.2f}"
            ratio = f"{r['time'] / ours['time']:.2f}" if r["impl"].startswith("sklearn") else "-"
            print(
                f"| {k} | {r['impl']} | {r['iters']} | {r['time']:.2f} | {compile_s} "
                f"| {r['inertia']:.1f} | {ratio} |"
            )
        if not args.skip_init:
            t_sk, t_ours = bench_init(x, k)
            print(f"| {k} | seeding only: sklearn kmeans_plusplus {t_sk:.2f} s, "
                  f"cure_jax (1 iteration) {t_ours:.2f} s | | | | | {t_sk / t_ours:.2f} |")

    n_f, k_f = 2_000, 50
    t_labels, ours, sk = bench_refresh(x[:n_f], k_f, iters=args.iters, repeats=args.repeats)
    print(f"\nCURE refresh, N={n_f}, K={k_f}:")
    print(f"- pseudo_labels (assign + farthest map), given centroids: {t_labels * 1e3:.2f} ms")
    print(
        f"- full kmeans: cure_jax {ours['time'] * 1e3:.1f} ms ({ours['iters']} it, "
        f"compile {ours['compile']:.2f} s, inertia {ours['inertia']:.2f}); "
        f"sklearn {sk['time'] * 1e3:.1f} ms ({sk['iters']} it, inertia {sk['inertia']:.2f})"
    )


if __name__ == "__main__":
    main()
