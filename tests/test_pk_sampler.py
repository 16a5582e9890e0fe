"""P x K batches: every batch holds K images of each of P groups, deterministically by index."""

import numpy as np
import pytest

from data_pipelines.pipelines import TargetSource, pk_dataset, pk_indices


def _source(n=30, size=8, dim=4):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    targets = rng.normal(size=(n, dim)).astype(np.float32)
    return TargetSource(images, targets, -targets)


def test_every_batch_has_k_images_of_p_groups():
    groups = np.repeat(np.arange(6), 5)  # 6 groups of 5
    dataset = pk_dataset(_source(), groups, groups_per_batch=3, images_per_group=4, seed=0)
    for step in range(5):
        batch = dataset[step]
        assert batch["image"].shape == (12, 8, 8, 3)
        batch_groups = groups[batch["index"]]
        names, counts = np.unique(batch_groups, return_counts=True)
        assert len(names) == 3 and np.all(counts == 4)
        # Within a group, distinct images (each group has enough).
        for name in names:
            assert len(np.unique(batch["index"][batch_groups == name])) == 4
    np.testing.assert_array_equal(dataset[3]["index"], dataset[3]["index"])
    assert not np.array_equal(dataset[3]["index"], dataset[4]["index"])


def test_targets_follow_the_flip_of_their_image():
    source = _source()
    groups = np.repeat(np.arange(6), 5)
    batch = pk_dataset(source, groups, groups_per_batch=3, images_per_group=4, seed=1)[0]
    for row, index in enumerate(batch["index"]):
        plain = source.targets[index]
        assert np.allclose(batch["target"][row], plain) or np.allclose(batch["target"][row], -plain)


def test_singletons_are_never_drawn_and_small_groups_repeat():
    rng = np.random.default_rng(0)
    groups = np.array([0, 0, 1, 2, 2, 2])  # group 1 has no pair
    rows = pk_indices(groups, groups_per_batch=4, images_per_group=3, rng=rng)
    assert 2 not in rows  # the singleton's only image
    with pytest.raises(ValueError, match="no group has two"):
        pk_indices(np.arange(5), groups_per_batch=2, images_per_group=2, rng=rng)
