"""Jitted embedding extraction over a source, in fixed-size padded batches."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from cure_jax import sharding
from data_pipelines.pipelines import eval_batches


def make_embed_fn(graph_eval: nnx.GraphDef):
    """`embed(params, batch_stats, images) -> raw embeddings [B, D]` with running BN statistics."""

    @jax.jit
    def embed(params, batch_stats, images):
        return nnx.merge(graph_eval, params, batch_stats).backbone(images)

    return embed


def embed_source(embed, params, batch_stats, source, *, batch_size: int, mesh,
                 flip: bool = False, progress: bool = False, desc: str = "embedding"
                 ) -> np.ndarray:
    """Raw embeddings [N, D] of every record of `source`, in order.

    With `flip`, the embedding of the mirrored image is added (arcface_torch's flip test sums the
    raw embeddings before normalising).
    """
    sharding.check_batch_size(batch_size, mesh, "eval.batch_size")
    total = None
    for mirrored in (False, True) if flip else (False,):
        chunks = []
        batches = eval_batches(source, batch_size=batch_size, flip=mirrored)
        steps = -(-len(source) // batch_size)
        for batch in tqdm(batches, total=steps, desc=desc, disable=not progress, leave=False):
            images = sharding.shard_batch(batch["image"], mesh)
            chunks.append((embed(params, batch_stats, images), batch["mask"]))
        emb = np.concatenate([np.asarray(e)[m] for e, m in chunks])
        total = emb if total is None else total + emb
    return total
