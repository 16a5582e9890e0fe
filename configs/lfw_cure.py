"""Unlearning on LFW: the LFW teacher of `configs/lfw.py` forgets 16 of its 158 people.

    python -m cure_jax.train --config lfw_cure
    python -m cure_jax.compare --config lfw_cure

Every method gets about the step budget it has on the embedded default: LFW's forget set is
~300 images (4 batches, against 10 there) and its retain set ~3,200 (49 batches, against 90), so
passes over the forget set are multiplied by 2.5 and passes over the retain set by about 2.

The teacher is the same as `lfw`'s (same data, model and recipe), so a workdir trained with
`--config lfw` can be reused with `--workdir runs/lfw`.
"""

import dataclasses
import importlib.util
import pathlib

from cure_jax.config import BaselinesConfig, UnlearnConfig

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
        # As many pseudo-classes as the teacher has people, as on the default.
        baselines=BaselinesConfig(clusters=158),
        # Forget-set passes x2.5, retain-set passes x~2 (see above).
        scrub=dataclasses.replace(base.scrub, epochs=5, max_steps_epochs=5),
        bad_teacher=dataclasses.replace(base.bad_teacher, epochs=2),
        unsir=dataclasses.replace(base.unsir, impair_epochs=2, repair_epochs=2),
        neggrad=dataclasses.replace(base.neggrad, epochs=25),
        random_label=dataclasses.replace(base.random_label, epochs=12, repair_epochs=2),
        grad_ascent=dataclasses.replace(base.grad_ascent, epochs=25),
        boundary_shrink=dataclasses.replace(base.boundary_shrink, epochs=25),
        finetune=dataclasses.replace(base.finetune, epochs=4),
        dispersion=dataclasses.replace(base.dispersion, epochs=100),
    )
