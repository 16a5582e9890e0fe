"""Layers of a pretrained backbone kept as imported while the rest of it fine-tunes.

A backbone's layers are its parameterised nodes (ONNX) or modules (IResNet) in forward order,
each with a name a user can read in the model's own vocabulary: the ONNX node names of an
imported graph (`conv_13_dw_conv2d`), the arcface_torch keys of an IResNet (`layer3.0.conv1`).

    names = [layer.name for layer in layers(backbone)]
    freeze(backbone, before="conv_13_dw_conv2d")   # or count=N: the first N layers

Freezing a layer does two things, both visible in the module itself, so that every training of
the run (the teacher's fine-tuning, each unlearning method, retraining) keeps it as imported
without being told:

- its parameters become `FrozenParam`s: still parameters (split, checkpointed, exported with the
  rest), which the optimisers of `cure_jax.optim` never update (`param_groups`);
- its batch norms normalise with their running statistics, also in training, so that the
  statistics are neither used from the batch nor updated.
"""

from __future__ import annotations

from typing import NamedTuple

from flax import nnx

from cure_jax.models.convert.onnx_import import OnnxBackbone
from cure_jax.models.convert.torch_state import variables_by_key
from cure_jax.models.iresnet import IResNet


class FrozenParam(nnx.Param):
    """A parameter kept as imported: a `nnx.Param` (so it is split, checkpointed and exported
    like any other) that `cure_jax.optim` leaves unchanged."""


class Layer(NamedTuple):
    """One layer of a backbone: its name and the paths of its variables in the backbone."""

    name: str
    paths: tuple[tuple, ...]


def _variable_paths(backbone: nnx.Module) -> dict[int, tuple]:
    """{id(variable): its path in `backbone`} of every variable."""
    return {id(node): path for path, node in nnx.iter_graph(backbone)
            if isinstance(node, nnx.Variable)}


def _onnx_layers(backbone: OnnxBackbone) -> list[Layer]:
    """One layer per node holding weights or a batch norm, in graph order."""
    weight_key = dict(backbone.weight_keys)
    norm_key = dict(backbone.node_keys)
    out, seen = [], set()
    for node in backbone.graph.nodes:
        paths = []
        if node.op_type == "BatchNormalization":
            key = norm_key[node.name]
            paths = [("norms", key, name) for name in ("bias", "mean", "scale", "var")]
        for name in node.inputs:
            if name in weight_key and name not in seen:  # a shared weight: its first reader
                seen.add(name)
                paths.append(("weights", weight_key[name]))
        if paths:
            out.append(Layer(node.name, tuple(paths)))
    return out


def _iresnet_layers(backbone: IResNet) -> list[Layer]:
    """One layer per arcface_torch module (`conv1`, `layer1.0.bn1`, ..., `fc`, `features`)."""
    path_of = _variable_paths(backbone)
    grouped: dict[str, list[tuple]] = {}
    for key, variable in variables_by_key(backbone).items():
        grouped.setdefault(key.rsplit(".", 1)[0], []).append(path_of[id(variable)])
    return [Layer(name, tuple(paths)) for name, paths in grouped.items()]


def layers(backbone: nnx.Module) -> list[Layer]:
    """The backbone's layers in forward order.

    Raises:
      TypeError: a backbone of another kind.
    """
    if isinstance(backbone, OnnxBackbone):
        return _onnx_layers(backbone)
    if isinstance(backbone, IResNet):
        return _iresnet_layers(backbone)
    raise TypeError(f"no layer list for a {type(backbone).__name__}; freezing supports imported "
                    "ONNX graphs and IResNets")


def leading_layers(backbone: nnx.Module, *, before: str = "", count: int = 0) -> list[Layer]:
    """The layers before the one named `before`, or the first `count` layers.

    Raises:
      ValueError: both or neither given, an unknown name (the message lists the layers), or a
        count above the number of layers.
    """
    all_layers = layers(backbone)
    if bool(before) == bool(count):
        raise ValueError("give exactly one of before= (a layer name) and count= (a number)")
    if count:
        if count > len(all_layers):
            raise ValueError(f"cannot freeze the first {count} layers: the backbone has "
                             f"{len(all_layers)}")
        return all_layers[:count]
    names = [layer.name for layer in all_layers]
    if before not in names:
        raise ValueError(f"no layer named {before!r}; the backbone's {len(names)} layers, in "
                         f"order: {', '.join(names)}")
    return all_layers[:names.index(before)]


def _parent(module: nnx.Module, path: tuple):
    node = module
    for part in path[:-1]:
        node = node[part] if isinstance(node, nnx.Dict | nnx.List) else getattr(node, part)
    return node


def freeze(backbone: nnx.Module, *, before: str = "", count: int = 0) -> list[str]:
    """Keeps the leading layers of `backbone` as they are (in place): their parameters become
    `FrozenParam`s and their batch norms use their running statistics in training too.

    Args:
      backbone: an imported ONNX graph or an IResNet.
      before: freeze every layer before the layer of this name.
      count: or freeze the first `count` layers.

    Returns:
      The names of the frozen layers.

    Raises:
      ValueError: see `leading_layers`.
    """
    chosen = leading_layers(backbone, before=before, count=count)
    for layer in chosen:
        for path in layer.paths:
            parent = _parent(backbone, path)
            variable = (parent[path[-1]] if isinstance(parent, nnx.Dict | nnx.List)
                        else getattr(parent, path[-1]))
            if isinstance(parent, nnx.BatchNorm):
                parent.use_running_average = True
            if type(variable) is nnx.Param:
                frozen = FrozenParam(variable[...])
                if isinstance(parent, nnx.Dict | nnx.List):
                    parent[path[-1]] = frozen
                else:
                    setattr(parent, path[-1], frozen)
    return [layer.name for layer in chosen]


def is_frozen(variable) -> bool:
    """Whether a variable (a leaf of a split state) is kept as imported."""
    return isinstance(variable, FrozenParam)
