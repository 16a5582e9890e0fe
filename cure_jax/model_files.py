"""The model files of a run, each with its sha256: the pretrained file a teacher came from (and
its verification before fine-tuning), the teacher and every student written back out.

A backbone goes out in the format its teacher came from (`export_format`): an imported ONNX
graph as ONNX (`export.export_onnx_backbone`), an IResNet from an arcface_torch `.pth` as a
`.pth` when torch is importable, and any other IResNet (trained here from scratch) as an
arcface_torch-style ONNX graph. Every file is checked against the JAX model on a few of the
run's faces before it is reported: onnxruntime runs an ONNX file when it is installed (else the
package's own importer reads it back), a `.pth` is read back by the package's importer; the
largest absolute difference of the unit embeddings (what verification and retrieval compare)
must be at most `MAX_EXPORT_DIFFERENCE`. Raw embeddings are not compared: their scale is the
model's own (a trained IResNet's run to the hundreds), and float32 rounding grows with it.

Records are flat dicts of JSON values, merged into `teacher/eval.json`-style files and
`metrics.json`: `<who>_file`, `<who>_sha256`, `<who>_export_max_abs_diff`,
`<who>_export_checked_with` for who in "teacher", "student"; `pretrained_file`,
`pretrained_sha256` and `pretrained_<verification metric>`.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from flax import nnx

from cure_jax import export, sharding
from cure_jax.embeddings import embed_pass, make_embed_fn
from cure_jax.evaluation import unit, verification_metrics, verification_sets
from cure_jax.models import pretrained
from cure_jax.models.backbone import Backbone, split_model
from cure_jax.models.convert.onnx_import import OnnxBackbone, import_onnx
from cure_jax.models.convert.torch_state import load_arcface_iresnet
from cure_jax.models.iresnet import in_float32
from data_pipelines.pipelines import normalize

MAX_EXPORT_DIFFERENCE = 1e-4
CHECK_IMAGES = 8  # faces the export check embeds both ways


class ExportError(ValueError):
    """An exported file whose embeddings differ from the JAX model's."""


def export_format(config) -> str:
    """".onnx" or ".pth": the format a run's backbones are written in (`Config`)."""
    source = config.model.pretrained
    if source and pretrained.resolve(source).suffix.lower() == ".pth" and _torch_importable():
        return ".pth"
    return ".onnx"


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _onnx_runtime():
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def _onnx_feed(model, pixels_BxSxSx3: np.ndarray) -> np.ndarray:
    """The input an exported graph takes for these uint8 faces: the imported graph's own
    convention (layout, pixel range, channel order), or an IResNet export's NCHW [-1, 1]."""
    if not isinstance(model, OnnxBackbone):
        return normalize(pixels_BxSxSx3).transpose(0, 3, 1, 2)
    x = pixels_BxSxSx3.astype(np.float32)
    x = x if model.input_range == "0-255" else normalize(pixels_BxSxSx3)
    x = x[..., ::-1] if model.bgr else x
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if model.layout == "NCHW" else x)


def _run_onnx(runtime, path: pathlib.Path, feed_BxCxSxS: np.ndarray) -> np.ndarray:
    options = runtime.SessionOptions()
    options.log_severity_level = 3
    session = runtime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    # One image at a time: some graphs (OpenCV Zoo's) fix the batch at 1.
    return np.concatenate([session.run(None, {name: feed_BxCxSxS[k:k + 1]})[0]
                           for k in range(len(feed_BxCxSxS))])


def _embed(model: nnx.Module, pixels: np.ndarray) -> np.ndarray:
    graphs, params, batch_stats = split_model(model)
    return np.asarray(make_embed_fn(graphs.eval)(params, batch_stats, normalize(pixels)))


def check_export(model: nnx.Module, path: pathlib.Path, pixels: np.ndarray) -> tuple[float, str]:
    """(largest absolute difference of the unit embeddings, what read the file) between `model`
    (its evaluation graph) and the file at `path`, on uint8 faces [B, S, S, 3]."""
    expected = _embed(model, pixels)
    runtime = _onnx_runtime()
    if path.suffix == ".onnx" and runtime is not None:
        got, reader = _run_onnx(runtime, path, _onnx_feed(model, pixels)), "onnxruntime"
    elif path.suffix == ".onnx":
        got, reader = _embed(import_onnx(path), pixels), "cure_jax import_onnx"
    else:
        got, reader = _embed(load_arcface_iresnet(path), pixels), "cure_jax load_arcface_iresnet"
    return float(np.max(np.abs(unit(got) - unit(expected)))), reader


def export_backbone(config, graph_eval: nnx.GraphDef, backbone: Backbone, path_stem: pathlib.Path,
                    pixels: np.ndarray, *, who: str) -> dict:
    """Writes `backbone` as `path_stem` + `export_format(config)`, checks it and returns its
    record (`who`: "teacher" or "student").

    Raises:
      ExportError: the file's embeddings differ from the model's by more than
        `MAX_EXPORT_DIFFERENCE`.
    """
    # A file holds float32 weights and computes in float32, whatever `model.dtype` trained with:
    # the check compares it with the float32 evaluation of the same parameters.
    model = in_float32(nnx.merge(graph_eval, backbone.params, backbone.batch_stats))
    path = path_stem.with_suffix(export_format(config))
    if isinstance(model, OnnxBackbone):
        digest = export.export_onnx_backbone(model, path)
    elif path.suffix == ".pth":
        digest = export.save_arcface_pth(model, path)
    else:
        digest = export.export_iresnet_onnx(model, path)
    difference, reader = check_export(model, path, pixels)
    if not difference <= MAX_EXPORT_DIFFERENCE:
        raise ExportError(f"{path}: the exported {who} gives unit embeddings up to "
                          f"{difference:.3g} away from the JAX model's ({reader}); at most "
                          f"{MAX_EXPORT_DIFFERENCE:g} is accepted")
    print(f"{who}: wrote {path} (sha256 {digest}); {reader} unit embeddings within "
          f"{difference:.2g} of the JAX model's")
    return {f"{who}_file": str(path), f"{who}_sha256": digest,
            f"{who}_export_max_abs_diff": difference, f"{who}_export_checked_with": reader}


def check_pixels(data) -> np.ndarray:
    """The faces every export check embeds: the first held-out images (training ones when
    there are none), uint8 [B, S, S, 3]."""
    rows = data.holdout_indices if len(data.holdout_indices) else data.train_indices
    return np.asarray(data.records.images[rows[:CHECK_IMAGES]])


def pretrained_record(config, folder: pathlib.Path, data, mesh) -> dict:
    """The pretrained file of `model.pretrained`: its path, its sha256 and its verification
    before fine-tuning (every verification set, flip test as `eval.flip`), computed once and
    kept in `folder/pretrained.json`; {} when the run trains from scratch.

    Raises:
      ConfigError: the teacher in `folder` was fine-tuned from a file with other contents.
    """
    from cure_jax.config import ConfigError

    if not config.model.pretrained:
        return {}
    path = pretrained.resolve(config.model.pretrained)
    digest = export.file_sha256(path)
    record_path = folder / "pretrained.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["pretrained_sha256"] != digest:
            raise ConfigError(f"{folder} was fine-tuned from a file with sha256 "
                              f"{record['pretrained_sha256']}; {path} now has {digest}. Use "
                              "another --workdir, or the original file")
        return record
    backbone = pretrained.load_backbone(config.model, image_size=config.data.image_size)
    graphs, params, batch_stats = split_model(backbone)
    params, batch_stats = sharding.replicate((params, batch_stats), mesh)
    embed = make_embed_fn(graphs.eval)
    record = {"pretrained_file": str(path), "pretrained_sha256": digest}
    for suffix, (name, verification) in verification_sets(data).items():
        views = [embed_pass(embed, params, batch_stats, verification.source,
                            batch_size=config.eval.batch_size, mesh=mesh, mirrored=mirrored,
                            progress=config.run.progress,
                            desc=f"pretrained: {name} images{' (mirrored)' if mirrored else ''}")
                 for mirrored in ((False, True) if config.eval.flip else (False,))]
        metrics = verification_metrics(views[0], views[1] if len(views) > 1 else None,
                                       verification)
        record.update({f"pretrained_{key}{suffix}": value for key, value in metrics.items()})
    folder.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def teacher_record(config, folder: pathlib.Path, graph_eval: nnx.GraphDef, backbone: Backbone,
                   data) -> dict:
    """The teacher's backbone written out once to `folder/teacher.<format>`, checked; its record
    is kept in `folder/export.json`."""
    record_path = folder / "export.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    record = export_backbone(config, graph_eval, backbone, folder / "teacher",
                             check_pixels(data), who="teacher")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record
