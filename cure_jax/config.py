"""Configuration: frozen dataclasses nested by concern, `get_config()` files and `--set` overrides.

A run is described by one `Config`. Experiment files under `configs/` define `get_config()`; the
command line refines it with `--set section.field=value`, each value coerced by the field's type.
Unknown keys and bad values are errors that name the valid choices.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import typing
from typing import Annotated, Any, Literal

from cure_jax.fields import (
    Count,
    CountOrZero,
    Fraction,
    NonNegativeFloat,
    PositiveFloat,
    Probability,
    Range,
    Seed,
)

# Each method's section is declared in the method's module.
from cure_jax.methods.bad_teacher import BadTeacherConfig
from cure_jax.methods.boundary_shrink import BoundaryShrinkConfig
from cure_jax.methods.cure import CureConfig
from cure_jax.methods.dispersion import DispersionConfig
from cure_jax.methods.finetune import FinetuneConfig
from cure_jax.methods.grad_ascent import GradAscentConfig
from cure_jax.methods.label_free import BaselinesConfig
from cure_jax.methods.neggrad import NegGradConfig
from cure_jax.methods.random_label import RandomLabelConfig
from cure_jax.methods.retrain import RetrainConfig
from cure_jax.methods.scrub import ScrubConfig
from cure_jax.methods.unsir import UnsirConfig
from cure_jax.quality import QualityConfig
from cure_jax.search import ForgetConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the faces come from and how they are split."""

    # The embedded renders, a folder per identity, insightface RecordIO, or a prepared TFDS set.
    source: Literal["synthetic", "folder", "recordio", "tfds"] = "synthetic"
    image_size: Literal[32, 64, 112] = 64  # square input side (32 for tests, 112 insightface's)
    seed: Seed = 0  # seeds rendering, splits and pair sampling
    # Synthetic source.
    num_identities: Annotated[int, Range(2)] = 200  # training identities
    images_per_identity: Count = 40
    num_verification_identities: CountOrZero = 100  # unseen people for verification (0: none)
    verification_images_per_identity: Annotated[int, Range(2)] = 10  # same-person pairs need 2
    # Balanced same / different pairs (a folder without pairs: at most this many, in 10 folds).
    num_verification_pairs: Annotated[int, Range(20)] = 3000
    # Folder source.
    root: str = ""  # <root>/<identity>/<image files>; relative paths resolve from the working dir
    min_images: Count = 1  # keep identities with at least this many images
    max_images: CountOrZero = 0  # cap of images per identity (0: no cap)
    crop_box: tuple[CountOrZero, ...] = ()  # (left, top, right, bottom) before resizing; () = none
    pairs: str = ""  # LFW-style pairs.txt for verification ("" = none); images under its lfw root
    # An unreadable image: stop with its name, or leave it out (listed in the run folder).
    on_bad_image: Literal["error", "skip"] = "error"
    # RecordIO and TFDS sources (data.source=recordio | tfds) use the folder filters above;
    # `root` is the folder holding train.rec, or the TFDS data dir ("" = TFDS's default).
    tfds_name: str = ""  # data.source=tfds: NAME[/CONFIG][:VERSION] of a prepared TFDS dataset
    verification_bins: tuple[str, ...] = ()  # insightface .bin sets, verified beside `pairs`
    # Folder, RecordIO, TFDS with neither `pairs` nor `verification_bins`: this share of the
    # identities with 2+ images (at least 2) does not train; pairs drawn among their images
    # verify, kept as the run folder's verification_pairs.txt. 0: no verification.
    holdout_identities: Annotated[float, Range(0.0, 0.5)] = 0.1
    # Both.
    holdout_per_identity: Fraction = 0.2  # share of each identity's images kept out of training
    augment_shift: CountOrZero = 4  # training augmentation: random translation up to this (px)
    # Folder source: "yunet" aligns every photo (training images and `pairs` images alike) to
    # the ArcFace template when it is decoded: YuNet's five landmarks, the largest of several
    # faces. A training photo without a face is left out, a verification photo without one is
    # resized whole (so that every pair counts); the run folder's alignment.json counts both.
    align: Literal["none", "yunet"] = "none"

    def problems(self) -> list[str]:
        out = []
        if self.crop_box and len(self.crop_box) != 4:
            out.append(f"{{p}}crop_box={self.crop_box} must be () or 4 integers (left, top, right, "
                       "bottom)")
        elif self.crop_box and not (self.crop_box[0] < self.crop_box[2]
                                    and self.crop_box[1] < self.crop_box[3]):
            out.append(f"{{p}}crop_box={self.crop_box} must have left < right and top < bottom")
        if self.align != "none":
            if self.source != "folder":
                out.append(f"{{p}}align={self.align} aligns photos from a folder; it needs "
                           f"{{p}}source=folder (got {self.source!r})")
            if self.image_size != 112:
                out.append(f"{{p}}align={self.align} warps faces to the 112x112 ArcFace "
                           f"template: it needs {{p}}image_size=112 (got {self.image_size})")
            if self.crop_box:
                out.append(f"{{p}}align={self.align} finds the face itself: leave "
                           "{p}crop_box empty")
            if self.on_bad_image != "error":
                out.append(f"{{p}}align={self.align} reads every photo before training: it "
                           "needs {p}on_bad_image=error")
        if 2 * self.augment_shift >= self.image_size:
            out.append(f"{{p}}augment_shift={self.augment_shift} must be less than half of "
                       f"{{p}}image_size={self.image_size}")
        return out


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Backbone and margin head."""

    depth: Literal["r18", "r34", "r50", "r100"] = "r18"
    width: Annotated[float, Range(0.0, 8.0, low_open=True)] = 0.25  # x the 64-128-256-512 widths
    embedding_dim: Annotated[int, Range(2, 8192)] = 128
    dropout: Fraction = 0.0  # before the embedding layer, as in arcface_torch
    head: Literal["arcface", "cosface"] = "cosface"  # CosFace verified better on the default
    scale: PositiveFloat = 32.0  # s in s * cos(theta)
    # CosFace cosine margin, or ArcFace angular margin in radians (0.5 is usual).
    margin: Annotated[float, Range(0.0, 1.5)] = 0.35
    straight_through: bool = True  # arcface_torch: the margin does not enter the gradient
    # A pretrained backbone to start from: an .onnx file or an arcface_torch .pth ("" = train
    # from scratch). A relative path is looked up from the working directory, then in the shared
    # models folder ($CURE_JAX_MODELS, else ../shared/models beside the repository). The file
    # sets the architecture (depth and width are then unused) and the input size; `dropout`
    # replaces its dropout ratio; `embedding_dim` must equal its embedding size.
    pretrained: str = ""
    # Layers kept as imported (parameters and batch-norm statistics) in every training of the
    # run: those before the layer of this name (an ONNX node, an arcface_torch module such as
    # layer3.0.bn1) ...
    freeze_before: str = ""
    freeze_layers: CountOrZero = 0  # ... or this many leading layers (0: none)

    def problems(self) -> list[str]:
        out = []
        if (self.freeze_before or self.freeze_layers) and not self.pretrained:
            out.append("{p}freeze_before / {p}freeze_layers keep pretrained layers as imported: "
                       "they need {p}pretrained")
        if self.freeze_before and self.freeze_layers:
            out.append(f"{{p}}freeze_before={self.freeze_before!r} and {{p}}freeze_layers="
                       f"{self.freeze_layers} both given; set one of them")
        return out


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule: SGD with momentum (the papers') or AdamW."""

    batch_size: Count = 64
    epochs: Count = 8
    optimizer: Literal["sgd", "adamw"] = "sgd"  # SGD: momentum, coupled decay; AdamW: decoupled
    lr: PositiveFloat = 0.1
    momentum: Fraction = 0.9  # SGD only
    weight_decay: NonNegativeFloat = 5e-4
    warmup_epochs: NonNegativeFloat = 0.5
    schedule: Literal["step", "cosine"] = "step"  # step: x `decay` at milestones; cosine to 0
    # Epochs at which the lr is multiplied by `decay`.
    milestones: tuple[PositiveFloat, ...] = (5.0, 7.0)
    decay: Annotated[float, Range(0.0, 1.0, low_open=True)] = 0.1
    # Where a head trains beside the backbone (the teacher's margin head, CURE's pseudo-label
    # head), the backbone's rate is this fraction of the head's: fine-tuning a pretrained
    # backbone (0 trains the head alone).
    backbone_lr_scale: Probability = 1.0

    def problems(self) -> list[str]:
        out = []
        if self.warmup_epochs > self.epochs:
            out.append(f"{{p}}warmup_epochs={self.warmup_epochs:g} is more than "
                       f"{{p}}epochs={self.epochs}")
        return out


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
    """The unlearning request and the method that serves it."""

    method: str = "cure"  # a name registered in cure_jax.methods
    forget_identities: CountOrZero = 20  # identities to forget (among the training identities)
    forget_fraction: Fraction = 0.0  # share of identities to forget instead (0: use the count)
    seed: Seed = 0  # seeds which identities are forgotten
    # Student batch norm: "frozen" (the teacher's running statistics, not updated: the student
    # starts exactly at the teacher) | "train" (batch statistics, running averages updated).
    batch_norm: Literal["frozen", "train"] = "frozen"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings."""

    batch_size: Annotated[int, Range(1, 65536)] = 128
    flip: bool = True  # arcface_torch flip test: embed image and mirror, sum, normalise
    ues_alpha: Probability = 0.5  # forget weight of the Unlearning Efficiency Score
    # Largest softmax probability above which a sample counts as "known".
    membership_threshold: Probability = 0.5


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Logging, checkpointing and devices."""

    seed: Seed = 0  # model initialisation and per-step keys
    log_every: Count = 20  # steps between metric reads (the only host syncs in the loop)
    checkpoint_every: Count = 200  # steps between checkpoints (and one at the end)
    max_to_keep: Count = 2
    num_devices: CountOrZero = 0  # data-parallel devices (0: all local devices)
    progress: bool = True  # tqdm progress bars
    # Continue an unfinished stage from this checkpoint step (0: from the start; -1: off), with
    # a changed learning rate accepted in its folder: what to do after a non-finite loss.
    restart_from: Annotated[int, Range(-1)] = -1


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run."""

    name: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    teacher: OptimConfig = OptimConfig()
    unlearn: UnlearnConfig = UnlearnConfig()
    # The unlearning methods' optimiser; an epoch is one pass over the forget set. AdamW: SGD
    # either destroyed the retained identities or forgot nothing (docs/RESULTS.md).
    student: OptimConfig = OptimConfig(batch_size=64, epochs=20, optimizer="adamw", lr=1e-4,
                                       warmup_epochs=0.0, milestones=(10.0, 15.0))
    cure: CureConfig = CureConfig()
    dispersion: DispersionConfig = DispersionConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    scrub: ScrubConfig = ScrubConfig()
    bad_teacher: BadTeacherConfig = BadTeacherConfig()
    unsir: UnsirConfig = UnsirConfig()
    neggrad: NegGradConfig = NegGradConfig()
    random_label: RandomLabelConfig = RandomLabelConfig()
    grad_ascent: GradAscentConfig = GradAscentConfig()
    boundary_shrink: BoundaryShrinkConfig = BoundaryShrinkConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    retrain: RetrainConfig = RetrainConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
    forget: ForgetConfig = ForgetConfig()  # forget requests from photos (cure_jax.forget)
    quality: QualityConfig = QualityConfig()  # quality-aware unlearning (quality_unlearn)


class ConfigError(ValueError):
    """A config key or value that does not exist or does not parse."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap(kind: Any) -> tuple[Any, tuple]:
    """(the plain type, its `Range`s) of a possibly `Annotated` field type."""
    if typing.get_origin(kind) is Annotated:
        plain, *extras = typing.get_args(kind)
        return plain, tuple(extra for extra in extras if isinstance(extra, Range))
    return kind, ()


def _coerce(key: str, text: str, kind: Any) -> Any:
    """Parses `text` as a value of type `kind` (bool, int, float, str, a Literal of those, or a
    tuple of those); ranges are checked by `validate`."""
    kind, _ = _unwrap(kind)
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        value = _coerce(key, text, type(choices[0]))
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")
        return value
    try:
        if origin is tuple:
            (item_kind, *_) = typing.get_args(kind)
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            return tuple(_coerce(key, p.strip(), item_kind) for p in parts)
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ConfigError:
        raise  # an item of a tuple, already named
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{key}={text!r}: not a valid {name}") from None
    raise ConfigError(f"{key}: fields of type {kind} cannot be set from the command line")


def _check_value(key: str, value: Any, kind: Any) -> None:
    """Raises ConfigError when `value` is not of `kind` or outside its ranges or choices."""
    kind, ranges = _unwrap(kind)
    origin = typing.get_origin(kind)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise ConfigError(f"{key}={value!r} is not one of "
                              f"{', '.join(map(str, typing.get_args(kind)))}")
        return
    if origin is tuple:
        (item_kind, *_) = typing.get_args(kind)
        for item in value:
            _check_value(key, item, item_kind)
        return
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key}={value!r} is not a number")
    for valid in ranges:
        if not valid.contains(value):
            raise ConfigError(f"{key}={value!r} is out of range: it must be {valid}")


def validate(config: Any, prefix: str = "") -> None:
    """Checks every field of `config` against its type's valid values (ranges, a `Literal`'s
    choices) and every section against its own rules between fields (`problems()`), before
    any work starts.

    Raises:
      ConfigError: naming the key, the value and the valid range or choices.
    """
    for name, kind in _field_types(type(config)).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            validate(value, prefix=f"{prefix}{name}.")
        else:
            _check_value(prefix + name, value, kind)
    for problem in (config.problems() if hasattr(config, "problems") else []):
        raise ConfigError(problem.format(p=prefix))


def get_value(config: Any, key: str) -> Any:
    """Reads a dotted key, e.g. `get_value(config, "teacher.lr")`."""
    for part in key.split("."):
        config = getattr(config, part)
    return config


def override(config: Any, key: str, text: str, *, _prefix: str = "") -> Any:
    """Returns `config` with the dotted `key` set to `text`, parsed by the field's type.

    Raises:
      ConfigError: the key does not exist (the message lists the valid keys at that level) or the
        value does not parse.
    """
    head, _, rest = key.partition(".")
    types_ = _field_types(type(config))
    where = _prefix or "the config"
    if head not in types_:
        raise ConfigError(
            f"unknown key {_prefix + head!r} in {where}; valid keys: {', '.join(sorted(types_))}"
        )
    current = getattr(config, head)
    if dataclasses.is_dataclass(current):
        if not rest:
            raise ConfigError(f"{_prefix + head!r} is a section; set one of its fields, e.g. "
                              f"{_prefix + head}.{dataclasses.fields(current)[0].name}=...")
        value = override(current, rest, text, _prefix=f"{_prefix}{head}.")
    else:
        if rest:
            raise ConfigError(f"{_prefix + head!r} has no field {rest!r}")
        value = _coerce(_prefix + head, text, types_[head])
    return dataclasses.replace(config, **{head: value})


def apply_overrides(config: Config, assignments: list[str]) -> Config:
    """Applies `key=value` strings in order and validates the choices."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {assignment!r}")
        config = override(config, key.strip(), text.strip())
    validate(config)
    return config


def load_config(path_or_name: str) -> Config:
    """Loads `get_config()` from a file path or from a name under the `configs` package."""
    path = pathlib.Path(path_or_name)
    if not path.suffix:
        path = pathlib.Path(__file__).resolve().parent.parent / "configs" / f"{path_or_name}.py"
    if not path.is_file():
        bundled = pathlib.Path(__file__).resolve().parent.parent / "configs"
        available = sorted(p.stem for p in bundled.glob("*.py") if p.stem != "__init__")
        raise ConfigError(f"config file {str(path)!r} not found; bundled configs: "
                          f"{', '.join(available)}")
    spec = importlib.util.spec_from_file_location(f"_cure_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    config = module.get_config()
    validate(config)
    return config


# Keys that change how a run is watched, not what it computes: a rerun may change them freely.
RUNTIME_KEYS = ("run.progress", "run.log_every", "run.num_devices", "run.restart_from")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(data: dict, cls: type = Config) -> Any:
    """Rebuilds a config from `to_dict` output (tuples come back from JSON lists)."""
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in types_:
            raise ConfigError(f"unknown key {name!r} for {cls.__name__}")
        kind = types_[name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(value, kind)
        elif typing.get_origin(kind) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def write_config(config: Config, path: pathlib.Path) -> None:
    path.write_text(json.dumps(to_dict(config), indent=2) + "\n")


def differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    flat_a, flat_b = _flatten(to_dict(a)), _flatten(to_dict(b))
    return sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k))


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out

