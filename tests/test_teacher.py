"""The teacher step: compiled once, learns, data-parallel equivalence."""

import os
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import config as config_lib
from cure_jax import optim, sharding, teacher
from cure_jax.models import backbone

SMOKE = config_lib.load_config("smoke")


def _setup(config=SMOKE, num_classes=8):
    model = backbone.build_model(config.model, num_classes=num_classes,
                                image_size=config.data.image_size, seed=0)
    graphs, params, stats = backbone.split_model(model)
    tx = optim.make_optimizer(config.teacher, 10)
    state = teacher.init_state(params, stats, tx)
    step = teacher.make_train_step(graphs.train, tx, config.model,
                                   optim.lr_schedule(config.teacher, 10))
    return state, step


def _batch(seed, batch=16, size=32, classes=8):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    # Class-dependent images so that there is something to learn.
    base = np.random.default_rng(123).uniform(-1, 1, (classes, size, size, 3)).astype(np.float32)
    images = base[labels] + 0.1 * rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    return {"image": jnp.asarray(images), "label": jnp.asarray(labels)}


def test_step_compiles_once_and_learns():
    state, step = _setup()
    key = jax.random.key(0)
    losses = []
    for i in range(12):
        state, metrics = step(state, _batch(i % 3), key)
        losses.append(float(metrics["loss"]))
    assert step._cache_size() == 1
    assert int(state.step) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_schedule_warms_up_then_decays_at_milestones():
    config = config_lib.apply_overrides(
        SMOKE, ["teacher.warmup_epochs=1", "teacher.milestones=2,3", "teacher.lr=0.1"])
    schedule = optim.lr_schedule(config.teacher, steps_per_epoch=10)
    assert float(schedule(0)) < 0.02
    np.testing.assert_allclose(float(schedule(15)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(25)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(35)), 0.001, rtol=1e-6)


def test_state_is_donated():
    state, step = _setup()
    old_leaf = jax.tree.leaves(state.params)[0]
    step(state, _batch(0), jax.random.key(0))
    assert old_leaf.is_deleted()


# A small learning rate keeps the comparison out of the chaotic regime, where float32
# reassociation differences (the sharded reductions sum in another order) grow step by step.
MULTI_DEVICE = textwrap.dedent("""
    import cure_jax, jax, numpy as np
    from cure_jax import config as config_lib, sharding
    from tests.test_teacher import SMOKE, _setup, _batch
    assert len(jax.devices()) == 4, jax.devices()
    config = config_lib.apply_overrides(SMOKE, ["teacher.lr=0.001"])
    losses, updates = [], []
    for n in (1, 4):
        mesh = sharding.make_mesh(n)
        state, step = _setup(config)
        before = jax.device_get(state.params)
        state = sharding.replicate(state, mesh)
        run = []
        for i in range(4):
            state, m = step(state, sharding.shard_batch(_batch(i), mesh), jax.random.key(0))
            run.append(float(m["loss"]))
        losses.append(run)
        after = jax.device_get(state.params)
        updates.append(np.concatenate([np.ravel(a - b) for a, b in
                                       zip(jax.tree.leaves(after), jax.tree.leaves(before))]))
    print(losses)
    # The first loss is computed from identical parameters: global batch statistics and means
    # make it equal. (Later losses drift by ~1e-4 relative: see docs/PERFORMANCE.md.)
    np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-5)
    gap = np.linalg.norm(updates[0] - updates[1]) / np.linalg.norm(updates[0])
    print("update gap", gap)
    assert gap < 1e-2, gap
    print("SAME")
""")


@pytest.mark.slow
def test_four_fake_devices_give_the_same_losses_as_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", MULTI_DEVICE], env=env, cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SAME" in out.stdout


def test_batch_not_divisible_by_devices_is_a_clear_error():
    four_devices = types.SimpleNamespace(size=4)  # all the check reads of a mesh
    sharding.check_batch_size(16, four_devices, "teacher.batch_size")
    with pytest.raises(ValueError, match=r"teacher.batch_size=18 is not divisible by the 4"):
        sharding.check_batch_size(18, four_devices, "teacher.batch_size")


def test_more_devices_than_visible_is_a_clear_error():
    with pytest.raises(ValueError, match="run.num_devices"):
        sharding.make_mesh(len(jax.devices()) + 1)
