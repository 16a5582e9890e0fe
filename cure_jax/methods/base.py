"""What every unlearning method receives and returns, and the registry of methods by name.

A method is a function `run(context) -> Backbone`. The context holds the frozen teacher, the
forget and retain images with the teacher's cached embeddings of them, the device mesh and a
folder for the method's checkpoints and logs. It holds no identity labels and no class centres
unless the config says that the request carries them (`dispersion.groups=labels`,
`baselines.labels=true`): that is what "unsupervised unlearning" means here. No method imports the
evaluator or the metrics, which hold the labels (tests/test_methods.py checks it).

Adding a method takes one module under `cure_jax/methods/`: its settings as a frozen dataclass,
its losses, a `run(context) -> Backbone` decorated with `register(name, check=..., reads=...)`,
and two lines elsewhere: the module's name in `cure_jax/methods/__init__.py` and its settings as
a section of `cure_jax.config.Config`. Baselines build on `label_free` (labels, one step, phases
through `run_phases`); CURE-like methods on `cure.unlearn`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from jax.sharding import Mesh

from cure_jax.models.backbone import Backbone, Graphs
from data_pipelines.pipelines import (
    TargetSource,
    ZipIterator,
    pk_dataset,
    target_dataset,
    train_iterator,
)


@dataclasses.dataclass(frozen=True)
class UnlabelledSet:
    """One side of a request (forget or retain): images and the teacher's embeddings of them.

    Attributes:
      images: uint8 [N, S, S, 3].
      teacher_emb: float32 [N, D] raw teacher embeddings of `images`.
      teacher_emb_flipped: float32 [N, D] raw teacher embeddings of the mirrored images.
    """

    images: np.ndarray
    teacher_emb: np.ndarray
    teacher_emb_flipped: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def source(self, labels: np.ndarray | None = None,
               labels_flipped: np.ndarray | None = None) -> TargetSource:
        """The images with the teacher's embeddings as targets (and a class per orientation,
        when given)."""
        return TargetSource(self.images, self.teacher_emb, self.teacher_emb_flipped, labels,
                            labels_flipped)


@dataclasses.dataclass(frozen=True)
class Supervision:
    """Identity labels and the teacher's identity classifier, for the supervised originals of the
    baselines (`baselines.labels=true`) only.

    Attributes:
      forget_labels: int [N_f] identity of each forget image, in [0, C).
      retain_labels: int [N_r] identity of each retain image.
      class_centres: [C, D] the teacher's margin-head class centres.
      scale: the margin head's logit scale s (logits `s * cos(z, W_c)`).
    """

    forget_labels: np.ndarray
    retain_labels: np.ndarray
    class_centres: np.ndarray
    scale: float


@dataclasses.dataclass(frozen=True)
class UnlearnContext:
    """Everything a method may use.

    Attributes:
      config: the run's `Config` (methods read `student`, `unlearn` and their own section).
      graphs: the backbone's graphs; `teacher` holds its arrays.
      teacher: the frozen original backbone; the student starts as a copy.
      forget: the images to forget.
      retain: the images to keep.
      mesh: the device mesh.
      folder: the method's folder (checkpoints, metrics.jsonl).
      forget_groups: int [N_f] identity of each forget image, only when the request carries
        them (`dispersion.groups=labels`); None keeps unlearning label-free.
      supervision: labels and class centres, only for `baselines.labels=true`; None otherwise.
    """

    config: object
    graphs: Graphs
    teacher: Backbone
    forget: UnlabelledSet
    retain: UnlabelledSet
    mesh: Mesh
    folder: pathlib.Path
    forget_groups: np.ndarray | None = None
    supervision: Supervision | None = None


Method = Callable[[UnlearnContext], Backbone]
# `check(config, num_forget, num_retain)` raises ValueError for a request the method cannot serve.
Check = Callable[[object, int, int], None]


class MethodSpec(NamedTuple):
    run: Method
    check: Check | None
    # Config keys (or key prefixes ending in ".") whose values the method's result depends on,
    # besides the teacher's and the request's (`stages.TEACHER_KEYS`, `stages.REQUEST_KEYS`).
    reads: tuple[str, ...]
    # True when the returned backbone embeds into a space of its own (a model trained from
    # scratch), so the teacher's class centres cannot score it.
    own_embedding_space: bool = False
    # True when its forget batches are P groups x K images (`dispersion.groups_per_batch` x
    # `dispersion.images_per_group` = `student.batch_size`) for `dispersion.epochs` epochs.
    pk_batches: bool = False


METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, check: Check | None = None, reads: tuple[str, ...] = (),
             own_embedding_space: bool = False,
             pk_batches: bool = False) -> Callable[[Method], Method]:
    """Decorator adding a method to the registry under `name`.

    Args:
      check: run before any training starts; raises ValueError for a request it cannot serve.
      reads: the config keys or sections (prefixes ending in ".") the method reads besides its
        own section `<name>.` (always included), the teacher's and the request's; a finished run
        of the method is reused only while these agree, and a change anywhere else leaves it be.
      own_embedding_space: the method's backbone does not descend from the teacher, so the
        metrics read through the teacher's class centres are left out of its evaluation.
      pk_batches: the method's forget batches are P x K (the dispersion section), so a request
        sized to its images (`stages.sized_for_images`) resizes them too.
    """

    def add(method: Method) -> Method:
        if name in METHODS:
            raise ValueError(f"unlearning method {name!r} is registered twice")
        METHODS[name] = MethodSpec(method, check, (f"{name}.", *reads), own_embedding_space,
                                   pk_batches)
        return method

    return add


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r} (unlearn.method); valid: "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def paired_iterator(context: UnlearnContext, *, batch_size: int, seed: int,
                    forget_groups: np.ndarray | None = None, dispersion=None) -> ZipIterator:
    """Endless {"forget", "retain"} batches, each {"image", "target", "index"}; the target is the
    teacher's embedding of the (possibly mirrored) image. With `dispersion` (a
    `DispersionConfig`), forget batches are P x K over `forget_groups`."""
    if dispersion is None:
        forget = target_dataset(context.forget.source(), batch_size=batch_size, seed=seed)
    else:
        forget = pk_dataset(context.forget.source(), forget_groups,
                            groups_per_batch=dispersion.groups_per_batch,
                            images_per_group=dispersion.images_per_group, seed=seed)
    return ZipIterator(
        forget=train_iterator(forget),
        retain=train_iterator(target_dataset(context.retain.source(), batch_size=batch_size,
                                             seed=seed + 1)),
    )


def check_batches(config, num_forget: int, num_retain: int) -> None:
    """Raises ValueError when the forget or retain set cannot fill one student batch."""
    batch_size = config.student.batch_size
    for name, count in (("forget", num_forget), ("retain", num_retain)):
        if count < batch_size:
            raise ValueError(f"the {name} set has {count} images, fewer than one batch of "
                             f"student.batch_size={batch_size}; lower it")
