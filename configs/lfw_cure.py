"""CURE on LFW: the LFW teacher of `configs/lfw.py` forgets 16 of its 158 people.

    python -m cure_jax.train --config lfw_cure

The teacher is the same as `lfw`'s (same data, model and recipe), so a workdir trained with
`--config lfw` can be reused with `--workdir runs/lfw`.
"""

import dataclasses
import importlib.util
import pathlib

from cure_jax.config import UnlearnConfig

_LFW = pathlib.Path(__file__).resolve().parent / "lfw.py"


def _lfw_config():
    spec = importlib.util.spec_from_file_location("_cure_jax_lfw_base", _LFW)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    base = _lfw_config()
    return dataclasses.replace(
        base,
        name="lfw_cure",
        unlearn=UnlearnConfig(method="cure", forget_identities=16),
        # The 16 people have ~300 training images, 4 batches: the paper's 50 epochs give 200
        # steps, as the default's 20 epochs of 10 batches do.
        student=dataclasses.replace(base.student, epochs=50, milestones=(25.0, 37.5)),
        cure=dataclasses.replace(base.cure, forget_clusters=16),
    )
