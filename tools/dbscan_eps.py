"""What DBSCAN finds in a run's forget set, by neighbourhood radius: the clusters, how many of
them CURE keeps as pseudo-label classes, and the noise points. Reads the teacher's cached
embeddings; labels only draw the request (which identities are forgotten), as every run does.

    python tools/dbscan_eps.py --workdir runs/default --seeds 0,1,2 --eps 0.1,0.2,0.3,0.4
"""

import argparse
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from cure_jax import config as config_lib
from cure_jax import host_clustering, seeds, stages
from cure_jax.embeddings import EvalEmbeddings
from cure_jax.losses.common import l2_normalize
from data_pipelines.datasets import load_face_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/default")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--eps", default="0.1,0.15,0.2,0.25,0.3,0.35,0.4")
    parser.add_argument("--min-samples", type=int, default=None,
                        help="default: the run's cure.dbscan_min_samples")
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir)
    config = config_lib.from_dict(json.loads((workdir / "config.json").read_text()))
    config = stages.with_method(config, "cure")
    min_samples = args.min_samples or config.cure.dbscan_min_samples
    data = load_face_data(config.data, progress=False)
    with np.load(workdir / "teacher" / "embeddings.npz") as cache:
        train = EvalEmbeddings.from_arrays({key: cache[key] for key in cache.files}).train
    print(f"K_f = {config.cure.forget_clusters}, min_samples = {min_samples}")
    print("| seed | eps | clusters found | kept | noise points | forget images |")
    print("|---|---|---|---|---|---|")
    for seed in seeds.parse_seeds(args.seeds):
        split = stages.request_split(seeds.with_seed(config, seed), data)
        rows = np.searchsorted(data.train_indices, split.forget)
        unit = np.asarray(l2_normalize(jnp.asarray(train[rows])))
        for eps in (float(e) for e in args.eps.split(",")):
            try:
                result = host_clustering.dbscan_clusters(
                    unit, num_clusters=config.cure.forget_clusters, eps=eps,
                    min_samples=min_samples)
                found, kept, noise = result.found, result.kept, result.noise
            except ValueError:
                found, kept, noise = 0, 0, len(unit)
            print(f"| {seed} | {eps:g} | {found} | {kept} | {noise} | {len(unit)} |")


if __name__ == "__main__":
    main()
