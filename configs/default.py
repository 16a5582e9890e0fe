"""The embedded default: synthetic faces, a slim IResNet-18 at 64x64.

    python -m cure_jax.train
"""

from cure_jax.config import Config


def get_config() -> Config:
    return Config(name="default")
