"""arcface_torch IResNet state dicts to and from `cure_jax.models.iresnet.IResNet`.

    model = load_arcface_iresnet("backbone.pth")       # depth, width, size, dim from the keys
    state = iresnet_state_dict(model)                  # the inverse, {key: np.ndarray}

Key mapping (arcface_torch `iresnet.py` -> ours):

    conv1, bn1, prelu                      -> stem_conv, stem_bn, stem_prelu
    layerN.i.{bn1,conv1,bn2,prelu,conv2,bn3} -> blocks[k].{same}    (k counts blocks in order)
    layerN.i.downsample.0 / .1             -> blocks[k].down_conv / down_bn
    bn2, fc, features                      -> final_bn, fc, features

Layouts: convolutions OIHW -> HWIO; `fc.weight` [D, C*H*W] -> kernel [H*W*C, D], since PyTorch
flattens NCHW maps in (C, H, W) order and our NHWC model in (H, W, C) order; BN weight, bias,
running_mean, running_var -> scale, bias, mean, var (`num_batches_tracked` is dropped).
arcface_torch freezes `features.weight` at 1 and our model has no such scale: it must be ones.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cure_jax.models.convert.torch_pickle import load_state_dict
from cure_jax.models.iresnet import DEPTHS, STAGE_CHANNELS, IResNet

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _entries(model: IResNet) -> dict[str, tuple[nnx.Variable, str]]:
    """{arcface_torch key: (our variable, layout)} for every tensor of `model`."""
    entries = {}

    def conv(key, module):
        entries[f"{key}.weight"] = (module.kernel, "conv")

    def bn(key, module):
        for torch_name, ours in _BN.items():
            variable = getattr(module, ours)
            if variable is not None:  # features has no scale (fixed at 1)
                entries[f"{key}.{torch_name}"] = (variable, "vector")

    conv("conv1", model.stem_conv)
    bn("bn1", model.stem_bn)
    entries["prelu.weight"] = (model.stem_prelu.slope, "vector")
    k = 0
    for stage, count in enumerate(stage_counts(model), start=1):
        for i in range(count):
            block, key = model.blocks[k], f"layer{stage}.{i}"
            bn(f"{key}.bn1", block.bn1)
            conv(f"{key}.conv1", block.conv1)
            bn(f"{key}.bn2", block.bn2)
            entries[f"{key}.prelu.weight"] = (block.prelu.slope, "vector")
            conv(f"{key}.conv2", block.conv2)
            bn(f"{key}.bn3", block.bn3)
            if block.down_conv is not None:
                conv(f"{key}.downsample.0", block.down_conv)
                bn(f"{key}.downsample.1", block.down_bn)
            k += 1
    bn("bn2", model.final_bn)
    entries["fc.weight"] = (model.fc.kernel, "fc")
    entries["fc.bias"] = (model.fc.bias, "vector")
    bn("features", model.features)
    return entries


def variables_by_key(model: IResNet) -> dict[str, nnx.Variable]:
    """{arcface_torch key: our variable} of every tensor of `model`, in forward order."""
    return {key: variable for key, (variable, _) in _entries(model).items()}


def stage_counts(model: IResNet) -> tuple[int, ...]:
    """Blocks per stage: a stage opens with the block whose stride is 2."""
    starts = [k for k, block in enumerate(model.blocks) if block.conv2.strides == 2]
    return tuple(np.diff([*starts, len(model.blocks)]).tolist())


def _to_ours(array: np.ndarray, layout: str, spatial: int) -> np.ndarray:
    if layout == "conv":
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if layout == "fc":
        out, flat = array.shape
        channels = flat // (spatial * spatial)
        # [D, (C, H, W)] -> [(H, W, C), D]: the input order of our NHWC flatten.
        return array.reshape(out, channels, spatial, spatial).transpose(2, 3, 1, 0).reshape(
            flat, out)
    return array


def _to_torch(array: np.ndarray, layout: str, spatial: int) -> np.ndarray:
    if layout == "conv":
        return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if layout == "fc":
        flat, out = array.shape
        channels = flat // (spatial * spatial)
        return array.reshape(spatial, spatial, channels, out).transpose(3, 2, 0, 1).reshape(
            out, flat)
    return array


def infer_iresnet_config(state: dict[str, np.ndarray]) -> dict:
    """IResNet settings from an arcface_torch state dict's keys and shapes.

    Returns:
      {"depth", "width", "input_size", "embedding_dim"}, the keyword arguments of `IResNet`.

    Raises:
      ValueError: a needed key is missing, or the block counts, widths or fc size fit no IResNet.
    """
    for key in ("conv1.weight", "fc.weight"):
        if key not in state:
            raise ValueError(f"state dict has no {key!r}: not an arcface_torch IResNet")
    counts = []
    for stage in range(1, 5):
        indices = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")}
        counts.append(len(indices))
    depth = next((name for name, blocks in DEPTHS.items() if blocks == tuple(counts)), None)
    if depth is None:
        raise ValueError(f"blocks per stage {tuple(counts)} match no IResNet depth; valid: "
                         + ", ".join(f"{n} {b}" for n, b in DEPTHS.items()))
    width = state["conv1.weight"].shape[0] / STAGE_CHANNELS[0]
    last = max(8, int(round(STAGE_CHANNELS[-1] * width)))
    embedding_dim, flat = state["fc.weight"].shape
    spatial = int(round(np.sqrt(flat / last)))
    if spatial * spatial * last != flat:
        raise ValueError(f"fc.weight has {flat} inputs, not {last} channels x a square map")
    return {"depth": depth, "width": width, "input_size": spatial * 16,
            "embedding_dim": int(embedding_dim)}


def iresnet_from_state_dict(state: dict[str, np.ndarray], *, dropout: float = 0.0) -> IResNet:
    """An `IResNet` holding an arcface_torch state dict's tensors.

    Args:
      state: {key: array}, as `load_state_dict` returns (a DataParallel `module.` prefix on
        every key is removed).
      dropout: the model's dropout rate (not part of a state dict).

    Returns:
      The model, in training mode.

    Raises:
      ValueError: unknown or missing keys, or a shape mismatch, naming the key.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    config = infer_iresnet_config(state)
    # Abstract construction: no random initialisation that the state dict would overwrite.
    model = nnx.eval_shape(lambda: IResNet(
        config["depth"], width=config["width"], input_size=config["input_size"],
        embedding_dim=config["embedding_dim"], dropout=dropout, rngs=nnx.Rngs(0)))
    entries = _entries(model)
    known = set(entries) | {k for k in state if k.endswith(".num_batches_tracked")}
    unknown = [k for k in state if k not in known and k != "features.weight"]
    missing = [k for k in entries if k not in state]
    if unknown or missing:
        raise ValueError(f"state dict does not fit IResNet {config}: unknown keys {unknown[:8]}"
                         f"{'...' if len(unknown) > 8 else ''}, missing keys {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}")
    scale = state.get("features.weight")
    if scale is not None and not np.all(scale == 1):
        raise ValueError("features.weight is not all ones; arcface_torch freezes it at 1 and "
                         "IResNet has no embedding BN scale")
    spatial = config["input_size"] // 16
    for key, (variable, layout) in entries.items():
        value = _to_ours(np.asarray(state[key], np.float32), layout, spatial)
        if value.shape != variable.shape:
            raise ValueError(f"{key}: shape {state[key].shape} maps to {value.shape}, the model "
                             f"expects {variable.shape}")
        variable.set_value(jnp.asarray(value))
    return model


def load_arcface_iresnet(path: str | os.PathLike, *, dropout: float = 0.0) -> IResNet:
    """`iresnet_from_state_dict` of an arcface_torch `backbone.pth`, read without torch."""
    try:
        return iresnet_from_state_dict(load_state_dict(path), dropout=dropout)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from err


def iresnet_state_dict(model: IResNet) -> dict[str, np.ndarray]:
    """The arcface_torch state dict of `model` ({key: float32 array}, PyTorch layouts),
    including `features.weight` (ones) and `num_batches_tracked` (0) so that it loads strictly."""
    spatial = model.input_size // 16
    state = {}
    for key, (variable, layout) in _entries(model).items():
        if key == "features.bias":
            state["features.weight"] = np.ones(model.embedding_dim, np.float32)
        state[key] = np.ascontiguousarray(_to_torch(np.asarray(variable[...], np.float32),
                                                    layout, spatial))
        if key.endswith(".running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    return state
