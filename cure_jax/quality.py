"""Label-free face image quality from the recognition model itself: SER-FIQ, GraFIQs and the
embedding norm. Higher always means better quality.

- **SER-FIQ** (Terhörst et al., CVPR 2020): the robustness of an image's embedding to random
  sub-networks. The pre-embedding features go `passes` (m) times through the embedding head with
  dropout at `rate` (dropout, fc, embedding BN, L2 normalisation); the quality is
  `2 * sigmoid(-mean_{i<j} ||z_i - z_j||)` over the m unit embeddings, the normalisation of the
  authors' released code (for a fixed m, any constant in front of the sum of distances rescales
  every image alike and leaves rankings unchanged). Their defaults: m = 100, rate 0.5, dropout
  only in the head, so the trunk runs once per image. The rate is an argument here: the model's
  configured dropout (0 by default) never decides it.
- **GraFIQs** (Kolf et al., CVPRW 2024): how hard an image pulls on the model. For each image
  alone, the inputs of every 2-D batch-norm layer (stem, every block's three, the projection
  shortcuts' and the one before the flatten) give a per-channel mean and biased variance over
  the spatial positions; their squared differences to the layer's running mean and variance,
  averaged over channels and summed over mean and variance, are averaged over the layers (the
  released code's `MSE(mean) + MSE(var)`, divided by the number of layers). The embedding's 1-D
  batch norm is left out, as there: a single image has no spread to compare there. The loss is
  back-propagated once and the quality is minus the sum of absolute gradients at `at`: the image
  ("image") or one stage's output ("stage1" ... "stage4"). The paper speaks of gradients "of
  pretrained FR weights"; the released code (`extract_grafiqs.py`) takes them at the image and
  at the four stage outputs, and that is what we follow, since it produced the paper's numbers.
  The default is the image: the best of the five on the synthetic faces (docs/quality.md).
  Larger gradients mean statistics further from the training distribution, hence the minus sign.
- **Embedding norm**: the L2 norm of the raw embedding (MagFace's observation that it grows with
  quality under margin losses); the cheap baseline.

The model is an `IResNet` or an imported ONNX graph (`OnnxBackbone`, e.g. OpenCV's SFace). On a
graph, SER-FIQ's head is everything after the graph's one Dropout node (SFace: flatten, fc,
embedding BN) and GraFIQs reads the inputs of its 2-D BatchNormalization nodes and takes the
gradient at the image only; `unsupported_reason` says when a score does not apply.

Each `make_*_fn` returns a jitted `score(params, batch_stats, images, key) -> float32 [B]` of a
backbone's evaluation graph (the key is used by SER-FIQ only), compiled once per input shape.
Shape suffixes: B images, S image side, F flattened pre-embedding features, D embedding
dimension, M stochastic passes.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from cure_jax import sharding
from cure_jax.fields import Count, CountOrZero, Range
from cure_jax.losses.common import l2_normalize
from cure_jax.models.convert import onnx_nhwc
from cure_jax.models.convert.onnx_import import OnnxBackbone
from cure_jax.models.iresnet import IResNet
from data_pipelines.pipelines import eval_batches

SCORES = ("serfiq", "grafiqs", "norm")
GRAFIQS_TARGETS = ("image", "stage1", "stage2", "stage3", "stage4")


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """Quality-aware unlearning (`python -m cure_jax.quality_unlearn`, SPEC section 6)."""

    # The teacher's score of each image: the embedding norm validated best on the synthetic
    # faces (docs/quality.md), and it costs nothing (read off the cached embeddings).
    score: Literal["norm", "serfiq", "grafiqs"] = "norm"
    # Training images scored below this percentile are forgotten (the paper's 35th).
    percentile: Annotated[float, Range(0.0, 100.0, low_open=True, high_open=True)] = 35.0
    # The method's budget: student steps of one forget batch each, whatever the images found
    # (the default CURE run's 20 epochs of 10 batches); epoch-valued settings scale alike.
    steps: Count = 200
    # CURE's forget clusters over the images found, which span every person: 0 takes
    # `baselines.clusters` (the number of people the label-free methods assume).
    forget_clusters: CountOrZero = 0


def trunk_with_bn_inputs(model: IResNet, images_BxSxSx3: jax.Array, *,
                         stage_taps: list[jax.Array] | None = None):
    """The backbone up to the flattened pre-embedding features, every batch norm on its running
    statistics, recording what enters each 2-D batch norm.

    It walks the same modules in the same order as `IResNet.__call__` (a test holds the two
    together), so that GraFIQs can read the batch-norm inputs and take gradients at the stage
    outputs without hooks.

    Args:
      model: an IResNet (either view: batch norms are called with their running statistics).
      images_BxSxSx3: normalised images.
      stage_taps: None, or one array per stage shaped like that stage's output, added to it (zeros
        make no change; their gradients are the gradients at the stage outputs).

    Returns:
      (features_BxF, bn_records, stage_outputs): the flattened features that enter the embedding
      head's dropout; a list of (batch norm module, its input) in call order; the output of each
      stage (before its tap is added).
    """
    records = []

    def norm(bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
        records.append((bn, x))
        return bn(x, use_running_average=True)

    x = model.stem_prelu(norm(model.stem_bn, model.stem_conv(images_BxSxSx3)))
    stage_outputs = []
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        out = norm(block.bn1, x)
        out = block.prelu(norm(block.bn2, block.conv1(out)))
        out = norm(block.bn3, block.conv2(out))
        shortcut = x if block.down_conv is None else norm(block.down_bn, block.down_conv(x))
        x = out + shortcut
        # Every stage opens with a projection block: the next one with a projection, or the
        # end, closes this stage.
        if i + 1 == len(blocks) or blocks[i + 1].down_conv is not None:
            stage_outputs.append(x)
            if stage_taps is not None:
                x = x + stage_taps[len(stage_outputs) - 1]
    x = norm(model.final_bn, x)
    return x.reshape(x.shape[0], -1), records, stage_outputs


def _check_serfiq_options(passes: int, rate: float) -> None:
    if not isinstance(passes, int | np.integer) or isinstance(passes, bool) or passes < 2:
        raise ValueError(f"SER-FIQ passes must be an integer >= 2 (pairs of embeddings are "
                         f"compared), got {passes!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"SER-FIQ dropout rate must be in [0, 1), got {rate!r}")


def serfiq_quality(model: IResNet | OnnxBackbone, images_BxSxSx3: jax.Array, key: jax.Array,
                   *, passes: int = 100, rate: float = 0.5) -> jax.Array:
    """SER-FIQ quality [B] in (0, 1]: 1 when every stochastic embedding agrees.

    Args:
      model: an IResNet, or an imported ONNX graph with one Dropout node (SFace: dropout on
        the last feature map, then flatten, fc and the embedding batch norm, as SER-FIQ's
        head), in evaluation mode.
      images_BxSxSx3: normalised images.
      key: PRNG key of the dropout masks; the same key gives the same scores.
      passes: m, stochastic passes through the embedding head, >= 2.
      rate: dropout rate in [0, 1) on the pre-embedding features.
    """
    _check_serfiq_options(passes, rate)
    _check_supported("serfiq", model)

    def dropout(pass_key: jax.Array, features: jax.Array) -> jax.Array:
        # Inverted dropout, as nnx.Dropout and Keras: kept features scaled by 1 / (1 - rate).
        keep = jax.random.bernoulli(pass_key, 1.0 - rate, features.shape)
        return jnp.where(keep, features / (1.0 - rate), 0.0)

    if isinstance(model, OnnxBackbone):
        one_pass = _onnx_head_passes(model, images_BxSxSx3, dropout)
    else:
        features_BxF = trunk_with_bn_inputs(model, images_BxSxSx3)[0]

        def one_pass(pass_key: jax.Array) -> jax.Array:
            raw_BxD = model.features(model.fc(dropout(pass_key, features_BxF)),
                                     use_running_average=True)
            return l2_normalize(raw_BxD)

    unit_MxBxD = jax.vmap(one_pass)(jax.random.split(key, passes))
    mean_distance_B = jax.lax.map(_mean_pairwise_distance, jnp.swapaxes(unit_MxBxD, 0, 1),
                                  batch_size=8)
    return 2.0 * jax.nn.sigmoid(-mean_distance_B)


def _onnx_head_passes(model: OnnxBackbone, images_BxSxSx3: jax.Array, dropout):
    """SER-FIQ's stochastic pass of an ONNX graph: the nodes up to its Dropout node run once;
    `one_pass(key)` drops the Dropout node's input with `dropout(key, x)` and runs the nodes after
    it (SFace: flatten, fc, embedding batch norm), returning unit embeddings [B, D]."""
    index = _onnx_dropout_index(model)
    node = model.graph.nodes[index]
    env = model.activations(images_BxSxSx3, stop=index)
    features = env[node.inputs[0]]

    def one_pass(pass_key: jax.Array) -> jax.Array:
        if isinstance(features, onnx_nhwc.ChannelsLast):  # elementwise: the layout is immaterial
            dropped = onnx_nhwc.ChannelsLast(dropout(pass_key, features.nhwc))
        else:
            dropped = dropout(pass_key, features)
        out = model.run_nodes({**env, node.outputs[0]: dropped}, start=index + 1)
        return l2_normalize(onnx_nhwc.canonical(out[model.graph.output_name]))

    return one_pass


def _onnx_dropout_index(model: OnnxBackbone) -> int | None:
    """The index of the graph's Dropout node when it has exactly one, else None."""
    found = [k for k, node in enumerate(model.graph.nodes) if node.op_type == "Dropout"]
    return found[0] if len(found) == 1 else None


def unsupported_reason(name: str, model, *, at: str = "image") -> str | None:
    """Why the score `name` (with GraFIQs target `at`) cannot be computed on `model`, a backbone
    module (either view), or None when it can.

    The embedding norm reads only the output and works on any backbone. SER-FIQ and GraFIQs walk
    the model: an `IResNet` (every target), or an imported ONNX graph (`OnnxBackbone`): SER-FIQ
    needs its one Dropout node (the dropout point before the embedding layer; SFace has one),
    GraFIQs its 2-D batch norms and takes gradients at the image only (stage outputs are the
    IResNet's).
    """
    if name not in SCORES:
        raise ValueError(f"unknown quality score {name!r}; valid: {', '.join(SCORES)}")
    if name == "norm" or isinstance(model, IResNet):
        return None
    if not isinstance(model, OnnxBackbone):
        return (f"{name} walks an IResNet or an imported ONNX graph; this backbone is a "
                f"{type(model).__name__}")
    if name == "serfiq":
        count = sum(node.op_type == "Dropout" for node in model.graph.nodes)
        if count != 1:
            return (f"SER-FIQ needs one dropout point before the embedding layer; the graph has "
                    f"{count} Dropout nodes")
        return None
    _check_target(at)
    if at != "image":
        return (f"GraFIQs at {at} takes gradients at an IResNet stage output; an ONNX graph has "
                "no stages (only the image target applies)")
    if not any(node.op_type == "BatchNormalization" for node in model.graph.nodes):
        return "GraFIQs needs batch norms; the graph has no BatchNormalization node"
    return None


def _check_supported(name: str, model, *, at: str = "image") -> None:
    reason = unsupported_reason(name, model, at=at)
    if reason is not None:
        raise ValueError(reason)


def _mean_pairwise_distance(points_MxD: jax.Array) -> jax.Array:
    """Mean Euclidean distance over the M (M - 1) / 2 distinct pairs of points."""
    # Differences rather than the Gram matrix: identical points give exactly 0, not sqrt of a
    # rounding error, so that a rate of 0 gives a quality of 1 (exactly, where the passes'
    # embeddings are bit-equal; the batched passes' rows can round an ulp apart on some CPUs),
    # not the 1e-4 or so below it that the square root of a rounding error would give.
    diff_MxMxD = points_MxD[:, None, :] - points_MxD[None, :, :]
    distance_MxM = jnp.sqrt(jnp.sum(diff_MxMxD * diff_MxMxD, axis=-1))
    count = points_MxD.shape[0]
    return jnp.sum(distance_MxM) / (count * (count - 1))


def bn_discrepancy(bn_records) -> jax.Array:
    """GraFIQs' loss: mean over batch norms of MSE(input mean, running mean) + MSE(input
    variance, running variance), statistics over every axis but the channels.

    Args:
      bn_records: (batch norm module, input [N, H, W, C]) pairs, from `trunk_with_bn_inputs`.

    Returns:
      A scalar.
    """
    terms = []
    for bn, x in bn_records:
        axes = tuple(range(x.ndim - 1))
        mean_C = jnp.mean(x, axis=axes)
        var_C = jnp.mean(jnp.square(x - mean_C), axis=axes)  # biased, as in training
        terms.append(jnp.mean(jnp.square(mean_C - bn.mean[...]))
                     + jnp.mean(jnp.square(var_C - bn.var[...])))
    return jnp.mean(jnp.stack(terms))


def grafiqs_magnitudes(model: IResNet | OnnxBackbone,
                       images_BxSxSx3: jax.Array) -> dict[str, jax.Array]:
    """Sum of absolute gradients of the batch-norm discrepancy of each image on its own.

    Args:
      model: an IResNet, or an imported ONNX graph (`OnnxBackbone`: the image target only).
      images_BxSxSx3: normalised images; each is scored alone (its batch-norm statistics are
        over its spatial positions only), with one forward and one backward pass.

    Returns:
      {target: float32 [B]} for every target in `GRAFIQS_TARGETS` ("image" or "stageK"); for
      an ONNX graph, {"image": ...}.
    """
    _check_supported("grafiqs", model)
    if isinstance(model, OnnxBackbone):
        return {"image": _onnx_grafiqs_image(model, images_BxSxSx3)}

    def one(image_SxSx3: jax.Array) -> jax.Array:
        image_1xSxSx3 = image_SxSx3[None]
        # Only the shapes of this forward pass are used; XLA drops its arithmetic.
        taps = [jnp.zeros_like(s) for s in trunk_with_bn_inputs(model, image_1xSxSx3)[2]]

        def loss(image, stage_taps):
            return bn_discrepancy(trunk_with_bn_inputs(model, image, stage_taps=stage_taps)[1])

        grad_image, grad_taps = jax.grad(loss, argnums=(0, 1))(image_1xSxSx3, taps)
        return jnp.stack([jnp.sum(jnp.abs(g)) for g in (grad_image, *grad_taps)])

    magnitudes_Bx5 = jax.vmap(one)(images_BxSxSx3)
    return {target: magnitudes_Bx5[:, i] for i, target in enumerate(GRAFIQS_TARGETS)}


def _onnx_grafiqs_image(model: OnnxBackbone, images_BxSxSx3: jax.Array) -> jax.Array:
    """GraFIQs' gradient magnitude at the image [B] of an ONNX graph: the discrepancy over the
    inputs of its 2-D BatchNormalization nodes (the 1-D ones after the flatten left out, as the
    IResNet's embedding batch norm), each image alone."""

    def loss(image_1xSxSx3: jax.Array) -> jax.Array:
        records = []

        def record(bn: nnx.BatchNorm, x: jax.Array) -> None:
            if x.ndim == 4:
                records.append((bn, x))

        model.activations(image_1xSxSx3, on_batch_norm=record)
        return bn_discrepancy(records)

    return jax.vmap(lambda image: jnp.sum(jnp.abs(jax.grad(loss)(image[None]))))(images_BxSxSx3)


def _check_target(at: str) -> None:
    if at not in GRAFIQS_TARGETS:
        raise ValueError(f"unknown GraFIQs target {at!r}; valid: {', '.join(GRAFIQS_TARGETS)}")


def make_serfiq_fn(graph_eval: nnx.GraphDef, *, passes: int = 100, rate: float = 0.5):
    """Jitted `score(params, batch_stats, images [B, S, S, 3], key) -> SER-FIQ quality [B]`."""
    _check_serfiq_options(passes, rate)

    @jax.jit
    def score(params, batch_stats, images, key):
        model = nnx.merge(graph_eval, params, batch_stats)
        return serfiq_quality(model, images, key, passes=passes, rate=rate)

    return score


def make_grafiqs_fn(graph_eval: nnx.GraphDef, *, at: str = "image"):
    """Jitted `score(params, batch_stats, images [B, S, S, 3], key) -> GraFIQs quality [B]`
    (minus the gradient magnitude at `at`; the key is unused)."""
    _check_target(at)

    @jax.jit
    def score(params, batch_stats, images, key):
        del key  # deterministic
        model = nnx.merge(graph_eval, params, batch_stats)
        _check_supported("grafiqs", model, at=at)
        return -grafiqs_magnitudes(model, images)[at]

    return score


def make_norm_fn(graph_eval: nnx.GraphDef):
    """Jitted `score(params, batch_stats, images [B, S, S, 3], key) -> ||raw embedding|| [B]`
    (the key is unused)."""

    @jax.jit
    def score(params, batch_stats, images, key):
        del key  # deterministic
        model = nnx.merge(graph_eval, params, batch_stats)
        return jnp.linalg.norm(model(images), axis=-1)

    return score


def make_quality_fn(name: str, graph_eval: nnx.GraphDef, *, passes: int = 100,
                    rate: float = 0.5, at: str = "image"):
    """The score called `name` ("serfiq", "grafiqs" or "norm"), with its options (`passes` and
    `rate` for SER-FIQ, `at` for GraFIQs; the others' options are ignored)."""
    if name == "serfiq":
        return make_serfiq_fn(graph_eval, passes=passes, rate=rate)
    if name == "grafiqs":
        return make_grafiqs_fn(graph_eval, at=at)
    if name == "norm":
        return make_norm_fn(graph_eval)
    raise ValueError(f"unknown quality score {name!r}; valid: {', '.join(SCORES)}")


def score_source(score, params, batch_stats, source, *, batch_size: int, mesh,
                 key: jax.Array | None = None, progress: bool = False,
                 desc: str = "quality") -> np.ndarray:
    """Quality [N] of every record of `source`, in order, in fixed-size padded batches.

    Args:
      score: a function from `make_quality_fn` (or a `make_*_fn`).
      params, batch_stats: the backbone's arrays.
      source: random-access records with an "image" (uint8 [S, S, 3]).
      batch_size: images per call; a multiple of the mesh size.
      mesh: the device mesh.
      key: PRNG key (SER-FIQ); batch b uses `fold_in(key, b)`. Default: key 0.
      progress: show a progress bar.
      desc: the progress bar's label.
    """
    sharding.check_batch_size(batch_size, mesh, "batch_size")
    key = jax.random.key(0) if key is None else key
    steps = -(-len(source) // batch_size)
    chunks = []
    batches = eval_batches(source, batch_size=batch_size)
    for b, batch in enumerate(tqdm(batches, total=steps, desc=desc, disable=not progress,
                                   leave=False)):
        images = sharding.shard_batch(batch["image"], mesh)
        chunks.append((score(params, batch_stats, images, jax.random.fold_in(key, b)),
                       batch["mask"]))
    return np.concatenate([np.asarray(s)[m] for s, m in chunks])
