"""A backbone as the rest of the package sees it: a static graph in training and in evaluation
mode, and its arrays (parameters and batch-norm statistics).

Modules are split with `nnx.split` into a graph and array states; steps merge them back, so that
everything that changes during training lives in plain pytrees that can be donated, sharded and
checkpointed.
"""

from __future__ import annotations

from typing import NamedTuple

from flax import nnx

from cure_jax.models.heads import CosineHead, FaceModel
from cure_jax.models.iresnet import IResNet


class Graphs(NamedTuple):
    """Static module structure in training mode and in evaluation mode (same arrays)."""

    train: nnx.GraphDef
    eval: nnx.GraphDef


class Backbone(NamedTuple):
    """The arrays of a backbone (teacher or student)."""

    params: nnx.State
    batch_stats: nnx.State


def build_model(config, *, num_classes: int, image_size: int, seed: int) -> FaceModel:
    """A freshly initialised backbone (`config`: a `ModelConfig`) with a margin head over
    `num_classes` classes."""
    rngs = nnx.Rngs(params=seed)
    backbone = IResNet(config.depth, width=config.width, input_size=image_size,
                       embedding_dim=config.embedding_dim, dropout=config.dropout, rngs=rngs)
    return FaceModel(backbone, CosineHead(config.embedding_dim, num_classes, rngs=rngs))


def split_model(model: nnx.Module) -> tuple[Graphs, nnx.State, nnx.State]:
    """(graphs, params, batch_stats) of a module with only Param and BatchStat variables."""
    graph_train, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    eval_view = nnx.view(model, use_running_average=True, deterministic=True)
    graph_eval = nnx.split(eval_view, nnx.Param, nnx.BatchStat)[0]
    return Graphs(graph_train, graph_eval), params, batch_stats
