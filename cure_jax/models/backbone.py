"""A backbone as the rest of the package sees it: a static graph in training and in evaluation
mode, and its arrays (parameters and batch-norm statistics).

Modules are split with `nnx.split` into a graph and array states; steps merge them back, so that
everything that changes during training lives in plain pytrees that can be donated, sharded and
checkpointed.
"""

from __future__ import annotations

from typing import NamedTuple

from flax import nnx

from cure_jax.models import pretrained
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


def build_model(config, *, num_classes: int, image_size: int, seed: int,
                random_weights: bool = False) -> FaceModel:
    """A backbone (`config`: a `ModelConfig`) with a fresh margin head over `num_classes`
    classes: a freshly initialised IResNet, or the pretrained file of `model.pretrained` with
    its frozen layers (`models.pretrained.load_backbone`).

    Args:
      random_weights: a randomly initialised backbone of the pretrained file's architecture
        instead of its trained weights (nothing frozen).
    """
    rngs = nnx.Rngs(params=seed)
    if config.pretrained and random_weights:
        backbone = pretrained.random_backbone(config, image_size=image_size, seed=seed)
    elif config.pretrained:
        backbone = pretrained.load_backbone(config, image_size=image_size)
    else:
        backbone = IResNet(config.depth, width=config.width, input_size=image_size,
                           embedding_dim=config.embedding_dim, dropout=config.dropout, rngs=rngs)
    return FaceModel(backbone, CosineHead(config.embedding_dim, num_classes, rngs=rngs))


def split_model(model: nnx.Module) -> tuple[Graphs, nnx.State, nnx.State]:
    """(graphs, params, batch_stats) of a module with only Param and BatchStat variables."""
    graph_train, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    eval_view = nnx.view(model, use_running_average=True, deterministic=True)
    graph_eval = nnx.split(eval_view, nnx.Param, nnx.BatchStat)[0]
    return Graphs(graph_train, graph_eval), params, batch_stats
