"""A tiny unlearning request for method tests: random-init teacher, forget and retain images."""

import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jax_core

from cure_jax import sharding
from cure_jax.embeddings import make_embed_fn
from cure_jax.methods.base import UnlabelledSet, UnlearnContext
from cure_jax.models.backbone import build_model, split_model
from cure_jax.teacher import Teacher
from data_pipelines.pipelines import normalize


def tiny_context(folder, config, *, num_forget=24, num_retain=48, seed=0, kinds=0):
    """A random-init teacher whose batch-norm statistics were warmed up on the images, and a
    forget set that differs from the retain set (darker top half). With `kinds`, the images are
    of that many kinds (a flat colour each under mild noise), which a model can learn apart."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_forget + num_retain, 32, 32, 3), dtype=np.uint8)
    if kinds:
        colours = rng.integers(0, 256, (kinds, 1, 1, 3))
        kind = np.arange(len(images)) % kinds
        images = (0.8 * colours[kind] + 0.2 * images).astype(np.uint8)
    images[:num_forget, :16] //= 4
    model = build_model(config.model, num_classes=8, image_size=32, seed=seed)
    warm_up = nnx.jit(lambda backbone, x: backbone(x))
    for _ in range(40):
        # Running batch-norm statistics of these images, as a trained teacher would have.
        warm_up(model.backbone, jnp.asarray(normalize(images)))
    graphs, params, stats = split_model(model)
    backbone_graphs, backbone = Teacher(graphs, params, stats).backbone()
    embed = make_embed_fn(backbone_graphs.eval)

    def teacher_emb(batch):
        return np.asarray(embed(backbone.params, backbone.batch_stats, normalize(batch)))

    plain, flipped = teacher_emb(images), teacher_emb(images[:, :, ::-1])
    sets = [UnlabelledSet(images[s], plain[s], flipped[s])
            for s in (slice(0, num_forget), slice(num_forget, None))]
    return UnlearnContext(config=config, graphs=backbone_graphs, teacher=backbone,
                          forget=sets[0], retain=sets[1], mesh=sharding.make_mesh(1),
                          folder=pathlib.Path(folder))


def convolutions(jaxpr) -> list:
    """Every convolution of a traced program, those inside custom gradients and loops included
    (the stride-2 ones of cure_jax.models.strided_conv sit in a custom VJP)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(eqn)
        for sub in jax_core.jaxprs_in_params(eqn.params):
            found.extend(convolutions(sub))
    return found
