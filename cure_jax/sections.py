"""The sections of a run's config that the core modules read: data, model, optimiser, request,
evaluation and run settings. Each method's section lives in the method's module; `cure_jax.config`
gathers them all into one `Config` (and is where they are imported from by configs and tools).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

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
    # The IResNet's compute dtype. bfloat16 is mixed precision for GPUs and TPUs: convolutions,
    # dense layer and activations in bfloat16; parameters, optimiser state, batch-norm statistics,
    # embeddings and losses in float32. Exports are float32. Meant for accelerators.
    dtype: Literal["float32", "bfloat16"] = "float32"
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
        if self.dtype != "float32" and self.pretrained:
            out.append(f"{{p}}dtype={self.dtype} applies to the IResNets built here; a "
                       "{p}pretrained file computes in float32")
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
    # Where compiled XLA programs are kept between runs (JAX's persistent compilation cache), so
    # that a resumed, repeated or next run loads them instead of compiling again: "auto" (a
    # folder the environment already chose, else ~/.cache/cure_jax/jax), "off", or a folder.
    compile_cache: str = "auto"
    # Continue an unfinished stage from this checkpoint step (0: from the start; -1: off), with
    # a changed learning rate accepted in its folder: what to do after a non-finite loss.
    restart_from: Annotated[int, Range(-1)] = -1
