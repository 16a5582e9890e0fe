"""A backbone as the rest of the package sees it: a static graph in training and in evaluation
mode, and its arrays (parameters and batch-norm statistics).

Modules are split with `nnx.split` into a graph and array states; steps merge them back, so that
everything that changes during training lives in plain pytrees that can be donated, sharded and
checkpointed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cure_jax.models import pretrained
from cure_jax.models.heads import CosineHead, FaceModel
from cure_jax.models.iresnet import CONV_INIT_STDDEV, IResNet

# `model.dtype` -> the IResNet's compute dtype (None: float32 throughout).
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


class Graphs(NamedTuple):
    """Static module structure in training mode and in evaluation mode (same arrays)."""

    train: nnx.GraphDef
    eval: nnx.GraphDef


class Backbone(NamedTuple):
    """The arrays of a backbone (teacher or student)."""

    params: nnx.State
    batch_stats: nnx.State


class _BatchedNormal:
    """An initialiser `N(0, stddev^2)` whose draws are made together, in one compiled kernel.

    Op by op, `jax.random.normal` compiles once per array shape (a dozen shapes in an IResNet,
    most of the time it takes to build one); under `jax.jit` each shape is still a kernel of its
    own. This one is used in two passes over the same construction: the first records each
    call's key and shape and returns zeros (which the compiler drops), `draw` makes every draw
    in one `vmap`ped call of the longest length, and the second pass hands them out in call
    order. The values are those of separate draws, `jax.random.normal(key, shape) * stddev`:
    threefry's bits are a function of the key and the flat index, so a longer draw begins with
    the shorter one and a reshape changes nothing (tests/test_models.py holds it to that).
    """

    def __init__(self, stddev: float):
        self.stddev = stddev
        self.requests: list[tuple[jax.Array, tuple[int, ...]]] = []
        self.table = None  # [calls, longest] draws, once `draw` has run
        self.served = 0

    def draw(self) -> None:
        longest = max(math.prod(shape) for _, shape in self.requests)
        keys = jnp.stack([key for key, _ in self.requests])
        self.table = jax.vmap(lambda key: jax.random.normal(key, (longest,)))(keys)

    def __call__(self, key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        shape = tuple(shape)
        if self.table is None:
            self.requests.append((key, shape))
            return jnp.zeros(shape, dtype)
        if self.requests[self.served][1] != shape:
            raise RuntimeError("the second construction asked for other shapes than the first")
        flat = self.table[self.served, : math.prod(shape)]
        self.served += 1
        # The barrier keeps the scaling its own operation, as in an op-by-op initialiser: fused
        # into the draw, it rounds differently.
        return jax.lax.optimization_barrier(flat.reshape(shape).astype(dtype)) * jnp.asarray(
            self.stddev, dtype)


def build_model(config, *, num_classes: int, image_size: int, seed: int,
                random_weights: bool = False) -> FaceModel:
    """A backbone (`config`: a `ModelConfig`) with a fresh margin head over `num_classes`
    classes: a freshly initialised IResNet, or the pretrained file of `model.pretrained` with
    its frozen layers (`models.pretrained.load_backbone`).

    Args:
      random_weights: a randomly initialised backbone of the pretrained file's architecture
        instead of its trained weights (nothing frozen).
    """
    if not config.pretrained:
        return _fresh_iresnet(config, num_classes=num_classes, image_size=image_size, seed=seed)
    rngs = nnx.Rngs(params=seed)
    if random_weights:
        backbone = pretrained.random_backbone(config, image_size=image_size, seed=seed)
    else:
        backbone = pretrained.load_backbone(config, image_size=image_size)
    return FaceModel(backbone, CosineHead(config.embedding_dim, num_classes, rngs=rngs))


def _fresh_iresnet(config, *, num_classes: int, image_size: int, seed: int) -> FaceModel:
    """A freshly initialised IResNet with its margin head.

    Initialised as one compiled program, with the convolution kernels drawn together: the same
    arrays, bit for bit, as constructing the modules op by op with `nnx.Rngs(params=seed)`, for
    about a third of the compile time.
    """

    def construct(key, conv_init):
        rngs = nnx.Rngs(params=key)
        backbone = IResNet(config.depth, width=config.width, input_size=image_size,
                           embedding_dim=config.embedding_dim, dropout=config.dropout, rngs=rngs,
                           conv_init=conv_init, dtype=COMPUTE_DTYPES[config.dtype])
        return FaceModel(backbone, CosineHead(config.embedding_dim, num_classes, rngs=rngs))

    def initialise(key):
        conv_init = _BatchedNormal(CONV_INIT_STDDEV)
        construct(key, conv_init)  # records the draws; its arrays are never used
        conv_init.draw()
        return construct(key, conv_init)

    # The key is an argument, not a constant: XLA would fold a constant key's draws at length.
    return nnx.jit(initialise)(jax.random.key(seed))


def split_model(model: nnx.Module) -> tuple[Graphs, nnx.State, nnx.State]:
    """(graphs, params, batch_stats) of a module with only Param and BatchStat variables."""
    graph_train, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    eval_view = nnx.view(model, use_running_average=True, deterministic=True)
    graph_eval = nnx.split(eval_view, nnx.Param, nnx.BatchStat)[0]
    return Graphs(graph_train, graph_eval), params, batch_stats
