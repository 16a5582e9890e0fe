"""tools/search_check.py: the nearest-neighbour and nearest-centroid ceilings."""

import numpy as np
import pytest

from tools import search_check


def test_nearest_neighbour_agreement_counts_images_whose_neighbour_is_someone_else():
    # Two people on two axes, three images each; one of person 0's images sits next to
    # person 1's images, so its nearest neighbour is theirs (and theirs is still their own).
    angles = np.array([0.00, 0.05, 1.50, 1.56, 1.60, 1.65])
    units = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert search_check.nearest_neighbour_agreement(units, labels) == pytest.approx(5 / 6)
    # In chunks smaller than the set, the image itself is still left out.
    assert search_check.nearest_neighbour_agreement(units, labels, chunk=4) == pytest.approx(5 / 6)
    assert search_check.nearest_neighbour_agreement(units, np.arange(6)) == 0.0


def test_nearest_centroid_agreement_counts_images_nearer_another_persons_centroid():
    # Person 0 spread from 0 to 1.2 rad (centroid near 0.6), person 1 tight at 1.5: the image
    # at 1.2 is nearer person 1's centroid; labels need not be 0..P-1.
    angles = np.array([0.0, 0.6, 1.2, 1.45, 1.5, 1.55])
    units = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([7, 7, 7, 3, 3, 3])
    assert search_check.nearest_centroid_agreement(units, labels) == pytest.approx(5 / 6)
