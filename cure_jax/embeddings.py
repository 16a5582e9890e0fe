"""Embedding extraction: one compiled function per graph, padded fixed-size batches, and every
evaluation set of a run embedded once per backbone (the teacher's kept on disk).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from cure_jax import sharding
from data_pipelines.pipelines import SubsetSource, eval_batches

_EMBED_FNS: dict = {}


def make_embed_fn(graph_eval: nnx.GraphDef):
    """`embed(params, batch_stats, images) -> raw embeddings [B, D]` of a backbone's evaluation
    graph (running BN statistics, no dropout). One jitted function per graph: every caller of the
    same graph shares its compilation."""
    if graph_eval not in _EMBED_FNS:

        @jax.jit
        def embed(params, batch_stats, images):
            return nnx.merge(graph_eval, params, batch_stats)(images)

        _EMBED_FNS[graph_eval] = embed
    return _EMBED_FNS[graph_eval]


def embed_pass(embed, params, batch_stats, source, *, batch_size: int, mesh, mirrored: bool,
               progress: bool = False, desc: str = "embedding") -> np.ndarray:
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


def save_arrays(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes an .npz atomically: a crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


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
                   desc="embeddings" + (" (mirrored)" if mirrored else ""))
        for mirrored in (False, True))
    save_arrays(path, {"plain": plain, "flipped": flipped})
    return plain, flipped


@dataclasses.dataclass(frozen=True)
class EvalEmbeddings:
    """One backbone's raw embeddings of every set a run evaluates on, each computed once.

    Attributes:
      train: [N_t, D] the training images (`data.train_indices`), as stored.
      train_flipped: [N_t, D] their mirror images (the teacher's: the methods' targets), or None.
      holdout: [N_h, D] the held-out images of the training identities (`data.holdout_indices`).
      verification: [N_v, D] the verification images, or None when there are none.
      verification_flipped: [N_v, D] their mirror images (the flip test), or None.
    """

    train: np.ndarray
    train_flipped: np.ndarray | None
    holdout: np.ndarray
    verification: np.ndarray | None
    verification_flipped: np.ndarray | None

    def arrays(self) -> dict[str, np.ndarray]:
        return {field.name: value for field in dataclasses.fields(self)
                if (value := getattr(self, field.name)) is not None}


def _sets(data) -> dict[str, object]:
    sets = {"train": SubsetSource(data.records, data.train_indices),
            "holdout": SubsetSource(data.records, data.holdout_indices)}
    if data.verification is not None:
        sets["verification"] = data.verification.source
    return sets


def embed_eval_sets(embed, backbone, data, *, batch_size: int, mesh, mirror_train: bool,
                    flip_test: bool, progress: bool = False, who: str = "") -> EvalEmbeddings:
    """Embeds every evaluation set of `data` with `backbone` (a `Backbone`), once.

    Args:
      embed: `make_embed_fn` of the backbone's evaluation graph.
      mirror_train: also embed the mirrored training images (the teacher's targets).
      flip_test: also embed the mirrored verification images (arcface_torch's flip test).
      who: a prefix for the progress bars.
    """
    out = {"train_flipped": None, "verification": None, "verification_flipped": None}
    for name, source in _sets(data).items():
        mirrors = {"train": mirror_train, "verification": flip_test}.get(name, False)
        for mirrored in (False, True) if mirrors else (False,):
            key = name + ("_flipped" if mirrored else "")
            out[key] = embed_pass(embed, backbone.params, backbone.batch_stats, source,
                                  batch_size=batch_size, mesh=mesh, mirrored=mirrored,
                                  progress=progress, desc=f"{who}{key} images")
    return EvalEmbeddings(**out)


def cached_eval_embeddings(path: pathlib.Path, embed, backbone, data, *, batch_size: int, mesh,
                           flip_test: bool, progress: bool = False) -> EvalEmbeddings:
    """The teacher's `EvalEmbeddings` (training images in both orientations), computed once per
    run folder and read back from the .npz at `path` while the sets keep their sizes."""
    sizes = {name: len(source) for name, source in _sets(data).items()}
    wanted = {"train", "train_flipped", "holdout"} | (
        {"verification"} | ({"verification_flipped"} if flip_test else set())
        if "verification" in sizes else set())
    if path.exists():
        with np.load(path) as cache:
            arrays = {key: cache[key] for key in cache.files}
        if set(arrays) == wanted and all(
                len(arrays[key]) == sizes[key.removesuffix("_flipped")] for key in arrays):
            return EvalEmbeddings(**{"verification": None, "verification_flipped": None,
                                     **arrays})
    result = embed_eval_sets(embed, backbone, data, batch_size=batch_size, mesh=mesh,
                             mirror_train=True, flip_test=flip_test, progress=progress,
                             who="teacher: ")
    save_arrays(path, result.arrays())
    return result
