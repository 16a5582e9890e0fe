"""A tiny run for tests: a few synthetic identities, 32x32 images, a narrow IResNet-18.

    python -m cure_jax.train --config smoke --workdir /tmp/smoke
"""

from cure_jax.config import (
    BaselinesConfig,
    Config,
    CureConfig,
    DataConfig,
    DispersionConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    UnlearnConfig,
)


def get_config() -> Config:
    return Config(
        name="smoke",
        data=DataConfig(image_size=32, num_identities=8, images_per_identity=10,
                        num_verification_identities=6, verification_images_per_identity=4,
                        num_verification_pairs=40),
        model=ModelConfig(width=0.125, embedding_dim=32),
        teacher=OptimConfig(batch_size=16, epochs=10, milestones=(7.0,), warmup_epochs=0.0),
        unlearn=UnlearnConfig(forget_identities=2),
        student=OptimConfig(batch_size=8, epochs=4, lr=0.001, milestones=(3.0,),
                            warmup_epochs=0.0),
        baselines=BaselinesConfig(clusters=4, kmeans_restarts=1),
        cure=CureConfig(forget_clusters=2, retain_clusters=4, refresh_every=2.0,
                        kmeans_restarts=1),
        # As long as the student's run; 2 groups x 4 images fill its batch of 8.
        dispersion=DispersionConfig(epochs=0, groups_per_batch=2),
        run=RunConfig(log_every=2, checkpoint_every=4, progress=False),
    )

