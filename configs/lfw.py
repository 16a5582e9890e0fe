"""A teacher on real faces: LFW people with at least 10 images, verified on LFW `pairs.txt`.

    python -m cure_jax.train --config configs/lfw.py --stage teacher

LFW is looked up at `$CURE_JAX_LFW`, else at `../shared/data/lfw` beside the repository. Its
aligned 128x128 crops are resized to 64x64. 158 identities (4,324 images) train the model; the
6,000 pairs of `pairs.txt` measure verification (some of their people are among the 158).
"""

import os
import pathlib

from cure_jax.config import Config, DataConfig, ModelConfig, OptimConfig, RunConfig

LFW = pathlib.Path(os.environ.get(
    "CURE_JAX_LFW", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"))


def get_config() -> Config:
    return Config(
        name="lfw",
        data=DataConfig(source="folder", root=str(LFW / "images"), pairs=str(LFW / "pairs.txt"),
                        min_images=10, image_size=64, holdout_per_identity=0.2),
        model=ModelConfig(depth="r18", width=0.25, embedding_dim=128, head="arcface",
                          margin=0.5),
        teacher=OptimConfig(batch_size=64, epochs=12, lr=0.1, milestones=(8.0, 11.0),
                            warmup_epochs=1.0),
        run=RunConfig(log_every=20, checkpoint_every=200),
    )
