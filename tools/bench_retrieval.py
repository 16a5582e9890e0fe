"""Benchmark: leave-one-out mAP of `cure_jax.metrics.retrieval` against NumPy argsort.

Synthetic pool: `--ids` identities of `--per-id` images each, unit `--dim`-d embeddings drawn
around random unit centres (Gaussian noise of norm about `--spread` times the centre's). The
same run times our counting implementation (cold, including compilation, and warm), a NumPy
implementation that argsorts every query's score row, and optionally scikit-learn's
`average_precision_score` on a subset of queries (time extrapolated to all queries); it checks
that the mAP and R@1 values agree.

    python tools/bench_retrieval.py                  # N = 20,000 = 2,000 identities x 10
    python tools/bench_retrieval.py --n 5000 --sklearn-queries 0
"""

import argparse
import shlex
import sys
import time

import numpy as np
from sklearn.metrics import average_precision_score

# The first cure_jax import sets the XLA flags; nothing above imports jax.
from cure_jax.metrics.retrieval import per_query_retrieval, retrieval_metrics


def make_pool(num: int, per_id: int, dim: int, spread: float, seed: int):
    """Unit embeddings [num, dim] float32 and labels [num] of clustered Gaussians."""
    rng = np.random.default_rng(seed)
    num_ids = -(-num // per_id)
    centres = rng.normal(size=(num_ids, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_ids), per_id)[:num]
    noise = rng.normal(size=(num, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    emb = centres[labels] + noise
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def numpy_argsort_retrieval(emb, labels, *, block_size: int = 1024):
    """Per-query best rank and AP by sorting every score row (the straightforward way)."""
    first, ap = [], []
    for lo in range(0, len(labels), block_size):
        query = np.arange(lo, min(lo + block_size, len(labels)))
        scores = emb[query] @ emb.T
        scores[np.arange(query.size), query] = -np.inf  # the query itself goes last
        order = np.argsort(-scores, axis=1)[:, :-1]  # drop the query (last)
        hits = labels[order] == labels[query][:, None]
        num_pos = hits.sum(axis=1)
        keep = num_pos > 0
        ranks = np.arange(1, hits.shape[1] + 1)
        precision = np.cumsum(hits, axis=1) / ranks
        ap.append((precision * hits).sum(axis=1)[keep] / num_pos[keep])
        first.append(np.argmax(hits, axis=1)[keep] + 1)
    return np.concatenate(first), np.concatenate(ap)


def sklearn_ap(emb, labels, queries):
    scores = emb[queries] @ emb.T
    out = []
    for row, q in zip(scores, queries, strict=True):
        keep = np.arange(len(labels)) != q
        out.append(average_precision_score(labels[keep] == labels[q], row[keep]))
    return np.array(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="pool size")
    parser.add_argument("--per-id", type=int, default=10, help="images per identity")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--spread", type=float, default=2.4, help="noise norm / centre norm")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--sklearn-queries", type=int, default=200, help="0 skips scikit-learn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))

    emb, labels = make_pool(args.n, args.per_id, args.dim, args.spread, args.seed)
    print(f"pool: N={args.n} D={args.dim} identities={labels.max() + 1} per_id={args.per_id}")

    t0 = time.perf_counter()
    cold = retrieval_metrics(emb, labels, block_size=args.block_size)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    query, first, ap = per_query_retrieval(emb, labels, block_size=args.block_size)
    t_ours = time.perf_counter() - t0
    print(f"ours (counting, JAX): {t_cold:7.2f} s cold (with compilation), {t_ours:7.2f} s warm; "
          f"mAP={np.mean(ap):.6f} R@1={np.mean(first <= 1):.6f} queries={query.size}")

    t0 = time.perf_counter()
    np_first, np_ap = numpy_argsort_retrieval(emb, labels, block_size=args.block_size)
    t_numpy = time.perf_counter() - t0
    print(f"numpy argsort:        {t_numpy:7.2f} s; mAP={np.mean(np_ap):.6f} "
          f"R@1={np.mean(np_first <= 1):.6f}")
    print(f"speed-up vs numpy argsort: {t_numpy / t_ours:.2f}x (warm), {t_numpy / t_cold:.2f}x "
          f"(cold)")
    print(f"agreement: |mAP diff|={abs(np.mean(ap) - np.mean(np_ap)):.2e}, max per-query |AP "
          f"diff|={np.max(np.abs(ap - np_ap)):.2e}, best-rank mismatches="
          f"{np.sum(first != np_first)}, mAP(cold run) diff={abs(cold.map - np.mean(ap)):.2e}")

    if args.sklearn_queries > 0:
        subset = np.linspace(0, query.size - 1, min(args.sklearn_queries, query.size)).astype(int)
        t0 = time.perf_counter()
        sk_ap = sklearn_ap(emb, labels, query[subset])
        t_sk = (time.perf_counter() - t0) * query.size / subset.size
        print(f"sklearn average_precision_score: ~{t_sk:7.2f} s extrapolated from {subset.size} "
              f"queries; max |AP diff| on them={np.max(np.abs(sk_ap - ap[subset])):.2e}")


if __name__ == "__main__":
    main()
