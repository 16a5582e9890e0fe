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

from cure_jax.fields import Range

# Every section: each method's is declared in the method's module, the core ones in
# cure_jax.sections (below the methods, which read them).
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
from cure_jax.sections import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    UnlearnConfig,
)


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
RUNTIME_KEYS = ("run.progress", "run.log_every", "run.num_devices", "run.restart_from",
                "run.compile_cache")


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

