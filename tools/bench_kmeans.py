"""Benchmark the k-means seedings of cure_jax.clustering against scikit-learn and faiss.

Data: N unit vectors in D = 512 around 1,000 random unit centres (Gaussian noise of the same
norm as a centre, then normalised: cosine to the centre about 0.7, like one identity's faces),
or with `--embeddings` the L2-normalised rows of a file (a run's embeddings, say).
Every implementation sees the same float32 array and runs at most `--iters` Lloyd iterations:

- cure_jax `k-means++` (greedy, as scikit-learn), `k-means||` (a pass over the points per round,
  then greedy k-means++ on the weighted candidates) and `random`; Lloyd stops when the
  assignments settle (`tol=0`). `k-means++/2` is greedy k-means++ with 2 local trials per
  centre instead of 2 + ln K; `k-means||/G` is k-means|| with G rounds (else `--rounds`).
  A `+yinyang` suffix (`k-means||+yinyang`) runs Lloyd with Yinyang's distance bounds
  (`algorithm="yinyang"`: the same assignments, fewer distances computed; the "passes" column
  counts them in passes over the points).
- `sklearn`: `KMeans(init="k-means++", n_init=1, tol=0)` (greedy k-means++, Lloyd until the
  assignments settle, or its own tol when given).
- `--restarts R` runs R restarts in each (ours: `num_restarts`, scikit-learn: `n_init`, faiss:
  `nredo`), the best inertia kept.
- `faiss` (optional: `pip install faiss-cpu`, or put it on PYTHONPATH): `faiss.Kmeans`, random
  seeding, exactly `--iters` iterations, no subsampling.

BLAS: the kernels NumPy (hence scikit-learn) and faiss's own OpenBLAS picked are printed. faiss's
wheel bundles an OpenBLAS that does not recognise some CPUs and falls back to a slow generic
kernel (seen on an Intel Xeon, fixed by OPENBLAS_CORETYPE=SkylakeX); where it recognises
the CPU, forcing a core type can be slower (an AMD EPYC with AVX-512: scikit-learn 3x slower with
SkylakeX forced). Set OPENBLAS_CORETYPE in the environment only when the printed kernel is
wrong. OMP_WAIT_POLICY defaults to PASSIVE here.

Runs are interleaved (seed 0 of every implementation, then seed 1, ...), so that a machine whose
load drifts slows every implementation alike; compare ratios from one run. Times are wall
seconds, after compilation (ahead of time, reported on its own), and process CPU
seconds (user + sys of every thread). Seeding is timed alone with `clustering.kmeans_init`
(the same seeds `kmeans` starts from); the end-to-end time includes it again. Inertias are
recomputed in float64 from each one's centroids and labels.

    python tools/bench_kmeans.py                 # N = 36,000, K = 100 and 1,000, 1 seed
    python tools/bench_kmeans.py --quick         # N = 6,000, K = 50 and 200
    python tools/bench_kmeans.py --ks 1000 --impls "k-means++,k-means||,sklearn,faiss"
    python tools/bench_kmeans.py --impls "k-means||,k-means||+yinyang,sklearn,faiss"
    python tools/bench_kmeans.py --embeddings RUN/teacher/embeddings.npz --ks 50,200,800
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

# Before NumPy, scikit-learn or faiss start their OpenMP runtimes: on a shared machine, threads
# that spin while waiting take cores from the ones that work (faiss ran 2x faster with it here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

import cure_jax  # noqa: E402, F401  (sets XLA flags before jax initialises)
from cure_jax import clustering, kmeans_seeding  # noqa: E402

OURS = {  # implementation name -> kmeans / kmeans_init keyword arguments
    "k-means++": {"init": "k-means++"},
    "k-means++/2": {"init": "k-means++", "num_local_trials": 2},
    "k-means||": {"init": "k-means||"},
    "random": {"init": "random"},
}
IMPLS = (*OURS, "sklearn", "faiss")
DEFAULT_IMPLS = ("k-means++", "k-means||", "random", "sklearn", "faiss")


def make_data(n: int, d: int, num_centres: int, seed: int) -> np.ndarray:
    """[n, d] float32 unit vectors scattered around `num_centres` random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_centres, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, num_centres, n)] + rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load_embeddings(path: pathlib.Path, n: int | None) -> tuple[np.ndarray, str]:
    """[N, D] float32 unit rows of a .npy array or of an .npz's arrays stacked, and a line that
    describes them."""
    if not path.is_file():
        raise SystemExit(f"--embeddings {path}: no such file")
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            names = sorted(arrays.files)
            x = np.concatenate([arrays[name].reshape(len(arrays[name]), -1) for name in names])
    elif path.suffix == ".npy":
        names, x = [path.stem], np.load(path)
    else:
        raise SystemExit(f"--embeddings {path}: expected a .npy or .npz file")
    if x.ndim != 2 or len(x) == 0:
        raise SystemExit(f"--embeddings {path}: expected [N, D] rows, got shape {x.shape}")
    x = x[:n].astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x, f"N={len(x)}, D={x.shape[1]}, unit rows of {path} ({', '.join(names)})"


def inertia64(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    diff = x.astype(np.float64) - np.asarray(centroids, np.float64)[np.asarray(labels)]
    return float(np.einsum("nd,nd->", diff, diff))


def timed(fn):
    """(result, wall seconds, process CPU seconds) of `fn()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


class Ours:
    """cure_jax's k-means with one seeding; compiles on `warm_up`, then times runs."""

    def __init__(self, x, k, *, iters, options, algorithm="lloyd", restarts=1):
        self.x, self.k, self.iters, self.options = x, k, iters, options
        self.algorithm, self.restarts = algorithm, restarts

    def seeds(self, seed):
        return jax.block_until_ready(clustering.kmeans_init(
            jax.random.key(seed), self.x, num_clusters=self.k, **self.options))

    def fit(self, seed):
        return jax.block_until_ready(clustering.kmeans(
            jax.random.key(seed), self.x, num_clusters=self.k, num_iters=self.iters,
            num_restarts=self.restarts, algorithm=self.algorithm, **self.options))

    def warm_up(self) -> float:
        """Compiles the two programs ahead of time, without running them (a run of k-means++
        at K = 1,000 costs more than its compilation); returns the compile seconds."""
        seeding = kmeans_seeding.settings(
            self.options["init"], self.k, self.options.get("num_local_trials"),
            self.options.get("parallel_rounds", 3), self.options.get("oversampling", 1.0))
        key, x = jax.random.key(0), jnp.asarray(self.x)
        start = time.perf_counter()
        # The private programs behind kmeans_init and kmeans, with the arguments they pass:
        # the calls that follow find them compiled.
        clustering._init_jit.lower(key, x, num_clusters=self.k, cosine=False, chunk_size=4096,
                                   seeding=seeding).compile()
        clustering._kmeans_jit.lower(key, x, jnp.asarray(0.0, jnp.float32), num_clusters=self.k,
                                     num_iters=self.iters, num_restarts=self.restarts,
                                     cosine=False,
                                     chunk_size=4096, seeding=seeding,
                                     algorithm=self.algorithm).compile()
        return time.perf_counter() - start

    def run(self, seed) -> dict:
        _, seed_wall, _ = timed(lambda: self.seeds(seed))
        res, wall, cpu = timed(lambda: self.fit(seed))
        return {"seeding": seed_wall, "wall": wall, "cpu": cpu, "iters": int(res.iterations),
                "passes": float(res.distance_passes),
                "inertia": inertia64(self.x, np.asarray(res.centroids),
                                     np.asarray(res.assignment))}


class Sklearn:
    def __init__(self, x, k, *, iters, tol, restarts=1):
        self.x, self.k, self.iters, self.tol, self.restarts = x, k, iters, tol, restarts

    def warm_up(self) -> None:
        return None

    def run(self, seed) -> dict:
        km = KMeans(self.k, init="k-means++", n_init=self.restarts, max_iter=self.iters,
                    tol=self.tol, random_state=seed)
        km, wall, cpu = timed(lambda: km.fit(self.x))
        return {"seeding": None, "wall": wall, "cpu": cpu, "iters": int(km.n_iter_),
                "passes": None, "inertia": inertia64(self.x, km.cluster_centers_, km.labels_)}


class Faiss:
    def __init__(self, x, k, *, iters, restarts=1):
        import faiss

        self.faiss, self.x, self.k, self.iters, self.restarts = faiss, x, k, iters, restarts

    def warm_up(self) -> None:
        return None

    def run(self, seed) -> dict:
        km = self.faiss.Kmeans(self.x.shape[1], self.k, niter=self.iters, seed=1234 + seed,
                               nredo=self.restarts,
                               max_points_per_centroid=len(self.x))  # all points, as the others
        _, wall, cpu = timed(lambda: km.train(self.x))
        _, labels = km.index.search(self.x, 1)
        return {"seeding": None, "wall": wall, "cpu": cpu, "iters": len(km.iteration_stats),
                "passes": None, "inertia": inertia64(self.x, km.centroids, labels[:, 0])}


def _parallel_rounds(name: str) -> int | None:
    """G of an implementation named `k-means||/G` (k-means|| with G rounds), else None."""
    prefix = "k-means||/"
    return int(name[len(prefix):]) if name.startswith(prefix) and name[len(prefix):].isdigit() \
        else None


YINYANG = "+yinyang"


def _known(name: str) -> bool:
    base = name.removesuffix(YINYANG)
    return name in IMPLS or base in OURS or bool(_parallel_rounds(base))


def make_impl(name, x, k, args):
    base = name.removesuffix(YINYANG)
    algorithm = "yinyang" if name.endswith(YINYANG) else "lloyd"
    if base == "k-means||" or _parallel_rounds(base):
        options = {"init": "k-means||", "parallel_rounds": _parallel_rounds(base) or args.rounds,
                   "oversampling": args.oversampling, "num_local_trials": args.local_trials}
        return Ours(x, k, iters=args.iters, options=options, algorithm=algorithm,
                    restarts=args.restarts)
    if base in OURS:
        options = {"num_local_trials": args.local_trials, **OURS[base]}
        return Ours(x, k, iters=args.iters, options=options, algorithm=algorithm,
                    restarts=args.restarts)
    if name == "sklearn":
        return Sklearn(x, k, iters=args.iters, tol=args.sklearn_tol, restarts=args.restarts)
    return Faiss(x, k, iters=args.iters, restarts=args.restarts)


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def bench_k(x, k, impls, args) -> None:
    runners = {name: make_impl(name, x, k, args) for name in impls}
    compile_s = {name: runner.warm_up() for name, runner in runners.items()}
    runs = {name: [] for name in impls}
    for seed in range(args.seeds):  # interleaved: drifting load hits every implementation
        for name, runner in runners.items():
            runs[name].append(runner.run(seed))
            print(f"  K={k} seed {seed} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)

    def mean(name, field):
        values = [r[field] for r in runs[name]]
        return None if values[0] is None else float(np.mean(values))

    base = "k-means++" if "k-means++" in runs else None
    for name in impls:
        seeding, wall, inertia = mean(name, "seeding"), mean(name, "wall"), mean(name, "inertia")
        spread = float(np.std([r["inertia"] for r in runs[name]]))
        ratios = [
            _cell(None if base is None or seeding is None else seeding / mean(base, "seeding"),
                  ".2f"),
            _cell(None if base is None else wall / mean(base, "wall"), ".2f"),
            _cell(None if "faiss" not in runs else wall / mean("faiss", "wall"), ".2f"),
            _cell(None if "sklearn" not in runs else inertia / mean("sklearn", "inertia"), ".4f"),
        ]
        label = name.replace("|", "\\|")  # a Markdown table cell
        print(f"| {k} | {label} | {_cell(seeding, '.2f')} | {wall:.2f} | {mean(name, 'cpu'):.2f} "
              f"| {_cell(compile_s[name], '.1f')} | {mean(name, 'iters'):.1f} "
              f"| {_cell(mean(name, 'passes'), '.2f')} "
              f"| {inertia:.1f} ± {spread:.1f} | {' | '.join(ratios)} |", flush=True)


def bench_refresh(x, k, *, iters, seeds):
    """CURE's cluster refresh on forget embeddings: labels from given centroids, or a rerun."""
    centroids = clustering.kmeans(jax.random.key(1), x, num_clusters=k).centroids

    def labels():
        return jax.block_until_ready(clustering.pseudo_labels(x, centroids)[1])

    timed(labels)  # compile
    print(f"- pseudo_labels (assign + farthest map), given centroids: "
          f"{min(timed(labels)[1] for _ in range(5)) * 1e3:.2f} ms")
    for name in ("k-means++", "k-means||"):
        ours = Ours(x, k, iters=iters, options=dict(OURS[name]))
        compile_s = ours.warm_up()
        runs = [ours.run(s) for s in range(seeds)]
        print(f"- cure_jax {name}: seeding {min(r['seeding'] for r in runs) * 1e3:.1f} ms, "
              f"k-means {min(r['wall'] for r in runs) * 1e3:.1f} ms (best of {seeds}; compile "
              f"{compile_s:.2f} s), inertia {np.mean([r['inertia'] for r in runs]):.2f}")
    sk = Sklearn(x, k, iters=iters, tol=0.0)
    runs = [sk.run(s) for s in range(seeds)]
    print(f"- sklearn: {min(r['wall'] for r in runs) * 1e3:.1f} ms, "
          f"inertia {np.mean([r['inertia'] for r in runs]):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 6,000, K = 50 and 200")
    parser.add_argument("--n", type=int, help="points (default 36,000; quick 6,000; with "
                        "--embeddings: the first N rows, default all)")
    parser.add_argument("--embeddings", type=pathlib.Path,
                        help="cluster these instead: a .npy array, or an .npz whose arrays are "
                             "stacked (e.g. a run's teacher/embeddings.npz); rows L2-normalised")
    parser.add_argument("--ks", help="comma-separated K values (default 100,1000; quick 50,200)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=1, help="restarts in each k-means")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per implementation")
    parser.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                        help=f"comma-separated, from {', '.join(IMPLS)}, k-means||/G; "
                             f"ours with a {YINYANG} suffix")
    parser.add_argument("--rounds", type=int, default=3, help="k-means|| rounds")
    parser.add_argument("--oversampling", type=float, default=1.0,
                        help="k-means|| candidates per round, times K")
    parser.add_argument("--local-trials", type=int,
                        help="greedy k-means++ candidates per centre, in ours and in k-means||'s "
                             "recluster (default: 2 + ln K, four times that in the recluster)")
    parser.add_argument("--sklearn-tol", type=float, default=0.0)
    parser.add_argument("--skip-refresh", action="store_true", help="skip the CURE refresh rows")
    parser.add_argument("--threads", type=int,
                        help="OpenMP and BLAS threads of scikit-learn and faiss (default: theirs)")
    args = parser.parse_args()
    impls = [name.strip() for name in args.impls.split(",")]
    if unknown := sorted(name for name in set(impls) if not _known(name)):
        parser.error(f"unknown implementation(s) {unknown}; valid: {', '.join(IMPLS)}, "
                     f"k-means||/G, and ours with a {YINYANG} suffix")
    if "faiss" in impls:
        try:
            import faiss  # loaded now, so that its OpenBLAS is listed
        except ImportError:
            print("faiss is not installed: its rows are left out", file=sys.stderr)
            impls.remove("faiss")
    if args.threads:
        # On a machine whose cores another job keeps busy, OpenMP threads wait at barriers for
        # descheduled peers: scikit-learn ran 19x slower with 2 threads than with 1 here.
        threadpool_limits(limits=args.threads)
        if "faiss" in impls:
            faiss.omp_set_num_threads(args.threads)
    ks = [int(k) for k in (args.ks or ("50,200" if args.quick else "100,1000")).split(",")]
    if args.embeddings:
        x, described = load_embeddings(args.embeddings, args.n)
    else:
        n = args.n or (6_000 if args.quick else 36_000)
        x = make_data(n, 512, 1_000, seed=0)
        described = f"N={n}, D=512, 1000 true centres, unit norm"
    env = {v: os.environ.get(v, "(unset)") for v in ("OPENBLAS_CORETYPE", "OMP_WAIT_POLICY")}
    blas = sorted({f"{pool.get('architecture')} ({os.path.basename(pool['filepath'])})"
                   for pool in threadpool_info() if pool["internal_api"] == "openblas"})

    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, {env}, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    print(f"OpenBLAS kernels: {', '.join(blas) or '(none found)'}; scikit-learn and faiss "
          f"threads: {args.threads or 'their default'}")
    print(f"data: {described}; at most {args.iters} iterations, "
          f"{args.restarts} restart(s); k-means|| {args.rounds} rounds x {args.oversampling:g} K; "
          f"candidates per centre: {args.local_trials or 'default'}; "
          f"{args.seeds} seed(s)\n")
    print("| K | implementation | seeding s | end to end s | CPU s | compile s | iterations "
          "| passes | inertia (mean ± sd) | seeding / k-means++ | time / k-means++ | time / faiss "
          "| inertia / sklearn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in ks:
        bench_k(x, k, impls, args)

    if not args.skip_refresh:
        n_f, k_f = 2_000, 50
        print(f"\nCURE refresh, N={n_f}, K={k_f} (wall, best of 3 seeds; inertia mean):")
        bench_refresh(x[:n_f], k_f, iters=args.iters, seeds=3)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
