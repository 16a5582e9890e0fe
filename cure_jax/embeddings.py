"""Jitted embedding extraction over a source, in fixed-size padded batches."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from cure_jax import sharding
from data_pipelines.pipelines import eval_batches


def make_embed_fn(graph_eval: nnx.GraphDef):
    """`embed(params, batch_stats, images) -> raw embeddings [B, D]` of a backbone's evaluation
    graph (running BN statistics, no dropout)."""

    @jax.jit
    def embed(params, batch_stats, images):
        return nnx.merge(graph_eval, params, batch_stats)(images)

    return embed


def embed_source(embed, params, batch_stats, source, *, batch_size: int, mesh,
                 flip: bool = False, progress: bool = False, desc: str = "embedding"
                 ) -> np.ndarray:
    """Raw embeddings [N, D] of every record of `source`, in order.

    With `flip`, the embedding of the mirrored image is added (arcface_torch's flip test sums the
    raw embeddings before normalising).
    """
    total = embed_pass(embed, params, batch_stats, source, batch_size=batch_size, mesh=mesh,
                       mirrored=False, progress=progress, desc=desc)
    if flip:
        total = total + embed_pass(embed, params, batch_stats, source, batch_size=batch_size,
                                   mesh=mesh, mirrored=True, progress=progress, desc=desc)
    return total


def embed_pass(embed, params, batch_stats, source, *, batch_size: int, mesh, mirrored: bool,
               progress: bool, desc: str) -> np.ndarray:
    """Raw embeddings [N, D] of every image of `source` (mirrored left to right with
    `mirrored`), in order."""
    sharding.check_batch_size(batch_size, mesh, "eval.batch_size")
    chunks = []
    steps = -(-len(source) // batch_size)
    batches = eval_batches(source, batch_size=batch_size, flip=mirrored)
    for batch in tqdm(batches, total=steps, desc=desc, disable=not progress, leave=False):
        images = sharding.shard_batch(batch["image"], mesh)
        chunks.append((embed(params, batch_stats, images), batch["mask"]))
    return np.concatenate([np.asarray(e)[m] for e, m in chunks])


def cached_embeddings(path, embed, params, batch_stats, source, *, batch_size: int, mesh,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Raw embeddings [N, D] of every record of `source` and of its mirror images, computed once
    and kept in the .npz file at `path` (a later call with the same source size reads it back).
    """
    path = pathlib.Path(path)
    if path.exists():
        with np.load(path) as cache:
            if len(cache["plain"]) == len(source):
                return cache["plain"], cache["flipped"]
    plain, flipped = (
        embed_pass(embed, params, batch_stats, source, batch_size=batch_size, mesh=mesh,
                   mirrored=mirrored, progress=progress,
                   desc="teacher embeddings" + (" (mirrored)" if mirrored else ""))
        for mirrored in (False, True))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, plain=plain, flipped=flipped)
    partial.replace(path)  # a crash never leaves a half-written cache behind
    return plain, flipped

