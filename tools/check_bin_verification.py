"""Check: LFW verified through a `.bin` written from `pairs.txt` gives the numbers of the
folder-and-pairs.txt path, on the whole set, with a real model pass.

    python tools/check_bin_verification.py [--image-size 64] [--seed 0]

The model is the default backbone, randomly initialised, run through the evaluator's own
`verification_metrics` (flip test, 10 folds, TAR@FAR=1e-3) on both sets; its accuracy is low,
what matters is that the two paths agree. LFW is looked up at `$CURE_JAX_LFW` or
`../shared/data/lfw`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import sharding
from cure_jax.embeddings import embed_pass, make_embed_fn
from cure_jax.evaluation import verification_metrics
from cure_jax.models.backbone import build_model, split_model
from data_pipelines.datasets import Verification
from data_pipelines.pipelines import materialize
from data_pipelines.sources.lfw_pairs import PairsSource
from data_pipelines.sources.verification_bin import BinPairsSource, pairs_to_bin

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared(variable: str, *parts: str) -> pathlib.Path:
    return pathlib.Path(os.environ.get(variable, REPO.parent.joinpath("shared", *parts)))


def as_verification(source) -> Verification:
    idx_a, idx_b, issame, folds = source.pair_indices
    return Verification(materialize(source, progress=False), idx_a, idx_b, issame, folds)


def iresnet_metrics(verification: Verification, image_size: int, seed: int) -> dict:
    config = config_lib.load_config("default")
    model = build_model(config.model, num_classes=2, image_size=image_size, seed=seed)
    graphs, params, stats = split_model(model.backbone)
    mesh = sharding.make_mesh(0)
    plain, mirrored = (embed_pass(make_embed_fn(graphs.eval), params, stats, verification.source,
                                  batch_size=128, mesh=mesh, mirrored=flip)
                       for flip in (False, True))
    return verification_metrics(plain, mirrored, verification)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-size", type=int, default=64, help="model input side")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation")
    args = parser.parse_args()
    size = args.image_size
    lfw = shared("CURE_JAX_LFW", "data", "lfw")
    with tempfile.TemporaryDirectory() as tmp:
        bin_path = os.path.join(tmp, "lfw.bin")
        count = pairs_to_bin(lfw, lfw / "pairs.txt", bin_path)
        print(f"wrote {count} pairs to a .bin of {os.path.getsize(bin_path) / 2**20:.1f} MiB")
        results = {}
        for name, source in (("pairs.txt", PairsSource(lfw, image_size=size)),
                             ("lfw.bin", BinPairsSource(bin_path, image_size=size))):
            start = time.perf_counter()
            verification = as_verification(source)
            results[name] = iresnet_metrics(verification, size, args.seed)
            print(f"{name}: {len(source)} images, {time.perf_counter() - start:.0f} s: "
                  f"{results[name]}")
    same = results["pairs.txt"] == results["lfw.bin"]
    print(f"random IResNet (seed {args.seed}) at {size}x{size}: identical results: {same}")


if __name__ == "__main__":
    main()
