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
      sets: {set name: (embeddings [N, D] of its images as stored, of their mirror images or
        None)}. "train": the training images (`data.train_indices`; mirrored for the teacher,
        whose embeddings are the methods' targets); "holdout": the held-out images of the
        training identities; "verification": the verification images (mirrored for the flip
        test), when there are any; "bin:<file>": the images of each `.bin` set.
    """

    sets: dict[str, tuple[np.ndarray, np.ndarray | None]]

    @property
    def train(self) -> np.ndarray:
        return self.sets["train"][0]

    @property
    def train_flipped(self) -> np.ndarray | None:
        return self.sets["train"][1]

    @property
    def holdout(self) -> np.ndarray:
        return self.sets["holdout"][0]

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat {name: array} for an .npz file (mirrors under "<name>|mirrored")."""
        out = {}
        for name, (plain, mirrored) in self.sets.items():
            out[name] = plain
            if mirrored is not None:
                out[f"{name}|mirrored"] = mirrored
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> EvalEmbeddings:
        return cls({name: (array, arrays.get(f"{name}|mirrored"))
                    for name, array in arrays.items() if not name.endswith("|mirrored")})


def eval_sets(data) -> dict[str, tuple[object, bool]]:
    """{set name: (source, whether it is a verification set)} of everything a run evaluates."""
    sets = {"train": (SubsetSource(data.records, data.train_indices), False),
            "holdout": (SubsetSource(data.records, data.holdout_indices), False)}
    if data.verification is not None:
        sets["verification"] = (data.verification.source, True)
    for name, verification in data.bin_verifications.items():
        sets[f"bin:{name}"] = (verification.source, True)
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
    def embed_set(source, name, mirrored):
        return embed_pass(embed, backbone.params, backbone.batch_stats, source,
                          batch_size=batch_size, mesh=mesh, mirrored=mirrored, progress=progress,
                          desc=f"{who}{name} images" + (" (mirrored)" if mirrored else ""))

    out = {}
    for name, (source, is_verification) in eval_sets(data).items():
        mirror = flip_test if is_verification else (mirror_train and name == "train")
        out[name] = (embed_set(source, name, False),
                     embed_set(source, name, True) if mirror else None)
    return EvalEmbeddings(out)


def cached_eval_embeddings(path: pathlib.Path, embed, backbone, data, *, batch_size: int, mesh,
                           flip_test: bool, progress: bool = False,
                           who: str = "teacher") -> EvalEmbeddings:
    """`who`'s `EvalEmbeddings` (training images in both orientations: the targets of what
    unlearns from it), computed once per run folder and read back from the .npz at `path` while
    it holds the same sets."""
    sizes = {name: len(source) for name, (source, _) in eval_sets(data).items()}
    if path.exists():
        with np.load(path) as cache:
            cached = EvalEmbeddings.from_arrays({key: cache[key] for key in cache.files})
        wanted_mirrors = {name: name == "train" or (flip_test and name not in ("holdout",))
                          for name in sizes}
        if ({name: len(plain) for name, (plain, _) in cached.sets.items()} == sizes
                and all((mirrored is not None) == wanted_mirrors[name]
                        for name, (_, mirrored) in cached.sets.items())):
            return cached
    result = embed_eval_sets(embed, backbone, data, batch_size=batch_size, mesh=mesh,
                             mirror_train=True, flip_test=flip_test, progress=progress,
                             who=f"{who}: ")
    save_arrays(path, result.arrays())
    return result
