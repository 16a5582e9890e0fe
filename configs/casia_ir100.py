"""The CURE paper's setup: an IResNet-100 ArcFace teacher (s = 64, m = 0.5) trained at 112x112 on
CASIA-WebFace, verified on LFW, CFP-FP and AgeDB-30, forgets 1,222 of its 10,572 identities.

    export CURE_JAX_CASIA=/data/faces_webface_112x112   # train.rec, train.idx, property, lfw.bin,
                                                        # cfp_fp.bin, agedb_30.bin (insightface's)
    python -m cure_jax.train --config casia_ir100       # teacher, then CURE
    python -m cure_jax.compare --config casia_ir100 --methods scrub,bad_teacher,unsir,neggrad,cure

It is sized for one large GPU (docs/casia_ir100.md: memory, step times, how to run it). From the
paper (SPEC section 2): the backbone, the margin head, the data, the number of people forgotten,
the unlearning batch of 128 (read as 64 forget + 64 retain images, docs/interpretations.md), 50
epochs with the learning rate x0.1 at epochs 5 and 10, forget clusters refreshed every 5 epochs.
Ours, because the paper does not give them: the teacher's recipe (arcface_torch's SGD, lr 0.1 at
batch 512, momentum 0.9, weight decay 5e-4, 26 epochs decayed x0.1 at 12, 20 and 24 as public
CASIA-WebFace scripts do), the unlearning optimiser (AdamW lr 1e-4, the project's choice; Adam's
first-moment 0.9 stands for the paper's momentum), K_f = 1,222 (one cluster per forgotten person,
as every bundled config), K_r = 2,500 (the default's 50 clusters for 180 retained people, scaled
to 9,350) and 20% of each person's images held out for the evaluation.
"""

import dataclasses
import os
import pathlib

from cure_jax.config import (
    BaselinesConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    UnlearnConfig,
)
from cure_jax.methods.cure import CureConfig

ENV = "CURE_JAX_CASIA"
BINS = ("lfw.bin", "cfp_fp.bin", "agedb_30.bin")


def casia_folder() -> pathlib.Path:
    """The folder `$CURE_JAX_CASIA` names, checked to hold a RecordIO training set.

    Raises:
      ConfigError: the variable is unset, or its folder lacks train.rec / train.idx.
    """
    value = os.environ.get(ENV, "")
    if not value:
        raise ConfigError(f"--config casia_ir100 reads CASIA-WebFace from ${ENV}, which is not "
                          "set: export it as the folder holding insightface's train.rec, "
                          f"train.idx, property and {', '.join(BINS)} (faces_webface_112x112)")
    folder = pathlib.Path(value).expanduser()
    missing = [name for name in ("train.rec", "train.idx") if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"${ENV}={value}: {folder} holds no {' and no '.join(missing)}; it must "
                          "be the folder of insightface's faces_webface_112x112 (or a .rec "
                          "written by `python -m data_pipelines.convert folder-to-rec`)")
    return folder


def get_config() -> Config:
    folder = casia_folder()
    student = OptimConfig(batch_size=64, epochs=50, optimizer="adamw", lr=1e-4,
                          warmup_epochs=0.0, milestones=(5.0, 10.0), decay=0.1)
    return Config(
        name="casia_ir100",
        data=DataConfig(source="recordio", root=str(folder), image_size=112,
                        verification_bins=tuple(str(folder / name) for name in BINS),
                        holdout_per_identity=0.2,
                        augment_shift=0),  # arcface_torch: a random horizontal flip only
        model=ModelConfig(depth="r100", width=1.0, embedding_dim=512, dropout=0.0,
                          head="arcface", scale=64.0, margin=0.5, straight_through=True),
        teacher=OptimConfig(batch_size=512, epochs=26, optimizer="sgd", lr=0.1, momentum=0.9,
                            weight_decay=5e-4, warmup_epochs=1.0,
                            milestones=(12.0, 20.0, 24.0), decay=0.1),
        unlearn=UnlearnConfig(method="cure", forget_identities=1222),
        student=student,
        # k-means|| seeding: greedy k-means++ would read all the embeddings once per centre
        # (10,572 passes over about 395,000 for the baselines' pseudo-classes, per restart);
        # k-means|| reads them 4 times (docs/casia_ir100.md).
        cure=dataclasses.replace(CureConfig(), forget_clusters=1222, retain_clusters=2500,
                                 refresh_every=5.0, kmeans_init="k-means||"),
        baselines=BaselinesConfig(clusters=10_572,  # as many pseudo-classes as people
                                  kmeans_init="k-means||"),
        eval=EvalConfig(batch_size=512),
        run=RunConfig(log_every=100, checkpoint_every=2000),
    )
