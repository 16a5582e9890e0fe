"""Raw-pixel baselines on the synthetic faces: how far pixels alone get.

Two figures, to compare with a trained network:
  1. closed-set identification: scikit-learn LogisticRegression on raw pixels (area-downsampled)
     of 75% of each training identity's images, top-1 accuracy on the other 25%;
  2. open-set verification: cosine similarity of raw pixels on balanced same/different pairs of
     unseen identities, 10-fold best-threshold accuracy (the arcface_torch protocol).

    python tools/pixel_baseline.py --identities 200 --images 40 --size 64
"""

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from data_pipelines.sources.synthetic import SyntheticFaces, make_verification_pairs


def render_features(source: SyntheticFaces, *, pixels: int) -> np.ndarray:
    """Renders every record; returns float32 [N, pixels * pixels * 3] in [-1, 1]."""
    size = source.image_size
    images = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float32)
    if pixels < size:
        if size % pixels:
            raise ValueError(f"--pixels must divide --size, got {pixels} and {size}")
        f = size // pixels  # area average: the fairest downsampling for a linear model
        images = images.reshape(len(images), pixels, f, pixels, f, 3).mean(axis=(2, 4))
    return ((images / 255.0 - 0.5) / 0.5).reshape(len(images), -1)


def best_threshold_accuracy(scores: np.ndarray, issame: np.ndarray, *, folds: int = 10):
    """Mean and std over contiguous folds of the accuracy at the best threshold of the others.

    Args:
      scores: float [P] similarity, higher = more alike ("same" when above the threshold).
      issame: bool [P].
      folds: number of contiguous folds.

    Returns:
      (mean, std) accuracy over folds.
    """
    thresholds = np.concatenate([np.unique(scores), [np.inf]])
    predicted = scores[None, :] >= thresholds[:, None]  # [T, P]
    correct = predicted == issame[None, :]
    accs = []
    for test in np.array_split(np.arange(len(scores)), folds):
        train = np.setdiff1d(np.arange(len(scores)), test)
        best = np.argmax(correct[:, train].mean(axis=1))
        accs.append(correct[best, test].mean())
    return float(np.mean(accs)), float(np.std(accs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=200, help="training identities")
    parser.add_argument("--images", type=int, default=40, help="images per identity")
    parser.add_argument("--size", type=int, default=64, help="rendered image side")
    parser.add_argument("--pixels", type=int, default=32, help="side after area downsampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-identities", type=int, default=100, help="unseen identities")
    parser.add_argument("--pairs", type=int, default=3000, help="verification pairs")
    parser.add_argument("--max-iter", type=int, default=300, help="LogisticRegression max_iter")
    args = parser.parse_args()

    start = time.perf_counter()
    train = SyntheticFaces(args.identities, args.images, args.size, seed=args.seed)
    x = render_features(train, pixels=args.pixels)
    labels = train.labels
    fit = (np.arange(len(train)) % args.images) < round(0.75 * args.images)
    print(f"rendered {len(train)} images in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    scaler = StandardScaler().fit(x[fit])
    model = LogisticRegression(max_iter=args.max_iter)
    model.fit(scaler.transform(x[fit]), labels[fit])
    top1 = model.score(scaler.transform(x[~fit]), labels[~fit])
    fit_acc = model.score(scaler.transform(x[fit]), labels[fit])
    print(
        f"pixel logistic regression: top-1 {top1:.4f} on {(~fit).sum()} held-out images of "
        f"{args.identities} identities (train accuracy {fit_acc:.4f}, chance "
        f"{1 / args.identities:.4f}; {time.perf_counter() - start:.1f} s)"
    )

    held_out = SyntheticFaces(
        args.test_identities, args.images, args.size, seed=args.seed,
        identity_offset=args.identities,
    )  # fmt: skip
    x = render_features(held_out, pixels=args.pixels)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    idx_a, idx_b, issame = make_verification_pairs(held_out.labels, args.pairs, args.seed)
    cosine = np.sum(x[idx_a] * x[idx_b], axis=1)
    mean, std = best_threshold_accuracy(cosine, issame)
    print(
        f"pixel cosine verification: {mean:.4f} +- {std:.4f} (10-fold best threshold) on "
        f"{args.pairs} pairs of {args.test_identities} unseen identities"
    )


if __name__ == "__main__":
    main()
